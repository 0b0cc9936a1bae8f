//! The object store (S3): where group objects, the owners object and the index live.
//!
//! [`ObjectStore`] is the seam: [`S3Store`] speaks to S3 or any S3-compatible server through
//! aws-sdk-s3, and tests of the publishing logic use
//! [`MemoryStore`](super::memory_store::MemoryStore). Every S3 client is
//! built by [`S3Store::connect`], the one place that wires the rustls + ring HTTP client (see
//! DEPENDENCIES.md: forgetting it compiles but panics at run time).
//!
//! Writes always carry a SHA-256 checksum so the server rejects a body damaged in transit, and
//! may carry a precondition (`If-None-Match: *` to create, `If-Match: <etag>` to replace) so two
//! publishers can never silently overwrite each other's index. Errors never include
//! credentials: the SDK does not put them in messages and this module adds only keys and codes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::settings::{S3Settings, ServerSideEncryption};

/// An object as read: its bytes and the ETag that identifies this version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub body: Vec<u8>,
    pub etag: String,
}

/// What a conditional read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The object changed (or no ETag was given): here it is.
    Object(StoredObject),
    /// The object still has the ETag the caller holds.
    NotModified,
    Missing,
}

/// A write's condition on what is there now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Write whatever is there.
    None,
    /// Only if the key does not exist yet.
    Absent,
    /// Only if the object still has this ETag.
    Matches(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else changed the object since it was read (HTTP 412).
    #[error("s3://{bucket}/{key} was changed by someone else (precondition failed)")]
    Conflict { bucket: String, key: String },
    /// The object is larger than this store reads ([`S3Store::with_max_object_bytes`]).
    #[error(
        "GET s3://{bucket}/{key} refused: the object is larger than the {limit} bytes keyhole reads"
    )]
    TooLarge {
        bucket: String,
        key: String,
        limit: u64,
    },
    #[error("{operation} s3://{bucket}/{key} failed: {detail}")]
    Request {
        operation: &'static str,
        bucket: String,
        key: String,
        detail: String,
    },
}

/// Counts of requests made, for logs, benchmarks and the "a no-change run writes nothing" tests.
/// Bytes are object bodies only (what a GET returned, what a PUT sent): the figure that grows
/// with what is published, not the HTTP headers or LIST pages around it.
#[derive(Debug, Default)]
pub struct RequestCounts {
    pub gets: AtomicUsize,
    pub puts: AtomicUsize,
    pub deletes: AtomicUsize,
    pub lists: AtomicUsize,
    pub bytes_read: AtomicUsize,
    pub bytes_written: AtomicUsize,
}

impl RequestCounts {
    pub fn writes(&self) -> usize {
        self.puts.load(Ordering::Relaxed) + self.deletes.load(Ordering::Relaxed)
    }
}

/// The operations keyhole needs from an object store. Keys are full keys (prefix included).
///
/// The futures are `Send`, so generic callers can spawn them (parallel reads and writes).
/// Implementations write plain `async fn`s; [`S3Store`] speaks to S3, and
/// [`MemoryStore`](super::memory_store::MemoryStore) is a bucket in memory for tests.
pub trait ObjectStore: Sync {
    /// Reads `key`; with `etag`, only when it no longer has that ETag.
    fn get(
        &self,
        key: &str,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Fetched, StoreError>> + Send;
    /// Writes `body` to `key` under `precondition`; returns the new ETag.
    fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        precondition: Precondition,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every key under `prefix`.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// The ETag `key` has now (`None`: missing), without its body. Some S3-compatible servers
    /// ignore `If-None-Match` on GET and send the whole body; every one answers HEAD without it.
    fn etag(&self, key: &str) -> impl Future<Output = Result<Option<String>, StoreError>> + Send {
        async move {
            Ok(match self.get(key, None).await? {
                Fetched::Object(object) => Some(object.etag),
                Fetched::NotModified | Fetched::Missing => None,
            })
        }
    }
}

/// The most a [`S3Store`] reads of one object unless told otherwise. Whoever can write to the
/// bucket chooses the sizes: without a bound, one huge object would make every instance (and
/// the publisher) hold it all in memory. Far above any real object: the largest, the owners
/// object, is about 100 bytes a key, so this is some 600,000 keys.
pub const MAX_OBJECT_BYTES: u64 = 64 * 1024 * 1024;

/// S3, or an S3-compatible server at `endpoint`.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    sse: Option<ServerSideEncryption>,
    /// Bodies above this are refused ([`StoreError::TooLarge`]) without being read whole.
    max_object_bytes: u64,
    pub counts: Arc<RequestCounts>,
}

/// Time limits for one store, set by the caller: the publisher can wait, a login cannot.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// One whole operation, retries included.
    pub operation: Duration,
    /// Attempts per operation (1 = no retry).
    pub attempts: u32,
}

impl Timeouts {
    /// For the publisher: patient, with the SDK's standard retry and backoff (throttling, 5xx).
    pub const PUBLISHER: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        operation: Duration::from_secs(60),
        attempts: 5,
    };
}

/// The AWS configuration every client is built from: the standard credential chain, the one TLS
/// stack (rustls + ring, see DEPENDENCIES.md: forgetting the HTTP client compiles but panics at
/// run time), `timeouts`, and `region` when given.
pub async fn aws_shared_config(region: Option<&str>, timeouts: Timeouts) -> aws_config::SdkConfig {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    use aws_smithy_http_client::tls;

    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(timeouts.attempts))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(timeouts.connect)
                .operation_timeout(timeouts.operation)
                .build(),
        );
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    loader.load().await
}

impl S3Store {
    /// Builds the client from the standard AWS chain (environment, profile, instance role) and
    /// the `[s3]` settings.
    pub async fn connect(settings: &S3Settings, timeouts: Timeouts) -> S3Store {
        let shared = aws_shared_config(settings.region.as_deref(), timeouts).await;
        let mut config =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(settings.force_path_style);
        if shared.region().is_none() {
            // S3-compatible servers do not care, but the SDK refuses to sign without a region.
            config = config.region(aws_config::Region::from_static("us-east-1"));
        }
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        S3Store {
            max_object_bytes: MAX_OBJECT_BYTES,
            client: aws_sdk_s3::Client::from_conf(config.build()),
            bucket: settings.bucket.clone(),
            sse: settings.sse.clone(),
            counts: Arc::default(),
        }
    }

    /// The same store, reading at most `limit` bytes of an object (an instance may want less than
    /// [`MAX_OBJECT_BYTES`]).
    pub fn with_max_object_bytes(mut self, limit: u64) -> S3Store {
        self.max_object_bytes = limit;
        self
    }

    fn too_large(&self, key: &str) -> StoreError {
        StoreError::TooLarge {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            limit: self.max_object_bytes,
        }
    }

    fn failure<E>(&self, operation: &'static str, key: &str, error: SdkError<E>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        if status(&error) == Some(412) {
            return StoreError::Conflict {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
            };
        }
        StoreError::Request {
            operation,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            detail: DisplayErrorContext(&error).to_string(),
        }
    }
}

fn status<E>(error: &SdkError<E>) -> Option<u16> {
    error
        .raw_response()
        .map(|response| response.status().as_u16())
}

/// The base64 SHA-256 S3 expects in `x-amz-checksum-sha256`.
pub fn checksum_sha256(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))
}

impl ObjectStore for S3Store {
    async fn get(&self, key: &str, etag: Option<&str>) -> Result<Fetched, StoreError> {
        self.counts.gets.fetch_add(1, Ordering::Relaxed);
        let etag_given = etag;
        let mut request = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(etag) = etag {
            request = request.if_none_match(etag);
        }
        let output = match request.send().await {
            Ok(output) => output,
            Err(error) if status(&error) == Some(304) => return Ok(Fetched::NotModified),
            Err(error)
                if status(&error) == Some(404)
                    || error.as_service_error().is_some_and(|e| e.is_no_such_key()) =>
            {
                return Ok(Fetched::Missing);
            }
            Err(error) => return Err(self.failure("GET", key, error)),
        };
        let etag = output.e_tag().unwrap_or_default().to_owned();
        // Some S3-compatible servers ignore If-None-Match on GET and answer 200: the same ETag
        // still means the same object, so the caller sees the same answer either way.
        if etag_given.is_some_and(|given| given == etag) {
            return Ok(Fetched::NotModified);
        }
        // The announced length is checked first, and the bytes as they come, since a server may
        // announce none (chunked) or the wrong one.
        let limit = self.max_object_bytes;
        if output
            .content_length()
            .is_some_and(|length| u64::try_from(length).unwrap_or(0) > limit)
        {
            return Err(self.too_large(key));
        }
        let mut stream = output.body;
        let mut body = Vec::new();
        loop {
            let chunk = stream
                .try_next()
                .await
                .map_err(|error| StoreError::Request {
                    operation: "GET",
                    bucket: self.bucket.clone(),
                    key: key.to_owned(),
                    detail: error.to_string(),
                })?;
            let Some(chunk) = chunk else { break };
            if u64::try_from(body.len() + chunk.len()).unwrap_or(u64::MAX) > limit {
                return Err(self.too_large(key));
            }
            body.extend_from_slice(&chunk);
        }
        self.counts
            .bytes_read
            .fetch_add(body.len(), Ordering::Relaxed);
        Ok(Fetched::Object(StoredObject { body, etag }))
    }

    async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        precondition: Precondition,
    ) -> Result<String, StoreError> {
        self.counts.puts.fetch_add(1, Ordering::Relaxed);
        self.counts
            .bytes_written
            .fetch_add(body.len(), Ordering::Relaxed);
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_sha256(checksum_sha256(&body))
            .content_type(if key.ends_with(".json") {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            })
            .body(ByteStream::from(body));
        request = match precondition {
            Precondition::None => request,
            Precondition::Absent => request.if_none_match("*"),
            Precondition::Matches(etag) => request.if_match(etag),
        };
        request = match &self.sse {
            None => request,
            Some(ServerSideEncryption::Aes256) => {
                request.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256)
            }
            Some(ServerSideEncryption::Kms { key_id }) => request
                .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                .set_ssekms_key_id(key_id.clone()),
        };
        let output = request
            .send()
            .await
            .map_err(|error| self.failure("PUT", key, error))?;
        Ok(output.e_tag().unwrap_or_default().to_owned())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.counts.deletes.fetch_add(1, Ordering::Relaxed);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|error| self.failure("DELETE", key, error))?;
        Ok(())
    }

    async fn etag(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.counts.gets.fetch_add(1, Ordering::Relaxed);
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => Ok(Some(output.e_tag().unwrap_or_default().to_owned())),
            Err(error)
                if status(&error) == Some(404)
                    || error.as_service_error().is_some_and(|e| e.is_not_found()) =>
            {
                Ok(None)
            }
            Err(error) => Err(self.failure("HEAD", key, error)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            self.counts.lists.fetch_add(1, Ordering::Relaxed);
            let page = page.map_err(|error| self.failure("LIST", prefix, error))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|object| object.key().map(str::to_owned)),
            );
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_base64_of_the_sha256() {
        // printf 'abc' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            checksum_sha256(b"abc"),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
    }
}
