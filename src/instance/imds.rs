//! The EC2 instance metadata service (IMDSv2), read through `aws-config`'s client: the instance's
//! tags and its user data, nothing else.
//!
//! Only `keyhole refresh` and `keyhole doctor` come here; the login path (`authorized-keys`)
//! never does, so a slow or missing IMDS can never hold up an SSH login. Every read is bounded:
//! one connect and read timeout per attempt, few attempts, and the caller's overall deadline.
//!
//! Answers are sorted into what the caller must tell apart: a path IMDS says does not exist
//! (404: the tag is not set, tags are not in the metadata, no user data), and IMDS not answering
//! usefully at all (no token, 5xx, a timeout, nothing listening). The user data may hold secrets
//! (people put them there): its content is never logged or put in an error.

use std::time::Duration;

use aws_config::imds::client::error::ImdsError;
use aws_config::provider_config::ProviderConfig;

/// The tag listing: one tag key per line, present only with `InstanceMetadataTags=enabled`.
pub const TAGS_PATH: &str = "/latest/meta-data/tags/instance";
pub const USER_DATA_PATH: &str = "/latest/user-data";

/// Why a read from IMDS gave no value.
#[derive(Debug, thiserror::Error)]
pub enum ImdsFailure {
    /// IMDS could not be reached or gave no usable answer; worth retrying later.
    #[error("the instance metadata service at {endpoint} did not answer {path}: {cause}")]
    Unreachable {
        endpoint: String,
        path: String,
        cause: String,
    },
    /// IMDS answered with a status that no retry will change (403: IMDS disabled for this
    /// instance, or the token refused).
    #[error("the instance metadata service at {endpoint} refused {path} with HTTP {status}")]
    Refused {
        endpoint: String,
        path: String,
        status: u16,
    },
}

/// A client for one metadata endpoint.
#[derive(Debug, Clone)]
pub struct Imds {
    client: aws_config::imds::Client,
    endpoint: String,
}

impl Imds {
    /// A client for `endpoint` (e.g. `http://169.254.169.254`) whose every attempt is bounded by
    /// `attempt_timeout`. Two attempts: a timer refresh retries in a minute anyway, and an
    /// operator running `doctor` should not wait for the SDK's four.
    pub fn new(endpoint: &str, attempt_timeout: Duration) -> anyhow::Result<Imds> {
        // Plain HTTP, like the real IMDS; keyhole builds its own connector because its
        // aws-config has no default HTTP client (one TLS stack, see DEPENDENCIES.md).
        let http = aws_smithy_http_client::Builder::new().build_http();
        let client = aws_config::imds::Client::builder()
            .configure(&ProviderConfig::without_region().with_http_client(http))
            .endpoint(endpoint)
            .map_err(|error| anyhow::anyhow!("imds_endpoint {endpoint:?} is not a URL: {error}"))?
            .max_attempts(2)
            .connect_timeout(attempt_timeout)
            .read_timeout(attempt_timeout)
            .build();
        Ok(Imds {
            client,
            endpoint: endpoint.to_owned(),
        })
    }

    /// The value at `path`; `Ok(None)` when IMDS answers 404 (the thing does not exist).
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsFailure> {
        match self.client.get(path).await {
            Ok(value) => Ok(Some(value.as_ref().to_owned())),
            Err(ImdsError::ErrorResponse(response)) => {
                let status = response.response().status().as_u16();
                match status {
                    404 => Ok(None),
                    500..=599 => Err(self.unreachable(path, format!("HTTP {status}"))),
                    _ => Err(ImdsFailure::Refused {
                        endpoint: self.endpoint.clone(),
                        path: path.to_owned(),
                        status,
                    }),
                }
            }
            Err(error) => Err(self.unreachable(path, cause_chain(&error))),
        }
    }

    /// The instance's tag keys, or `None` when tags are not in the metadata (the instance was
    /// launched without `InstanceMetadataTags=enabled`).
    pub async fn tag_keys(&self) -> Result<Option<Vec<String>>, ImdsFailure> {
        Ok(self.get(TAGS_PATH).await?.map(|listing| {
            listing
                .lines()
                .map(str::trim)
                .filter(|key| !key.is_empty())
                .map(str::to_owned)
                .collect()
        }))
    }

    /// The value of tag `key`, `None` when the instance has no such tag.
    pub async fn tag(&self, key: &str) -> Result<Option<String>, ImdsFailure> {
        self.get(&format!("{TAGS_PATH}/{key}")).await
    }

    /// The instance's user data, `None` when it has none.
    pub async fn user_data(&self) -> Result<Option<String>, ImdsFailure> {
        self.get(USER_DATA_PATH).await
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn unreachable(&self, path: &str, cause: String) -> ImdsFailure {
        ImdsFailure::Unreachable {
            endpoint: self.endpoint.clone(),
            path: path.to_owned(),
            cause,
        }
    }
}

/// The error and its sources on one line: the SDK's top-level messages alone ("failed to load
/// IMDS session token") do not say whether nothing listened or something answered badly.
fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = inner.source();
    }
    parts.join(": ")
}
