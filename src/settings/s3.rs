//! `[s3]`: the bucket the publisher writes and instances read, and how it is encrypted.

use serde::Deserialize;

use super::check::{Checker, check_non_empty};

#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    pub sse: Option<ServerSideEncryption>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSideEncryption {
    Aes256,
    Kms { key_id: Option<String> },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawS3 {
    bucket: Option<String>,
    prefix: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    force_path_style: Option<bool>,
    sse: Option<String>,
    kms_key_id: Option<String>,
}

pub(super) fn validate(raw: RawS3, check: &mut Checker) -> Option<S3Settings> {
    const S: &str = "s3";
    let bucket = check.required(S, "bucket", check_non_empty(raw.bucket));
    let mut prefix = raw.prefix.unwrap_or_default();
    if prefix.starts_with('/') {
        check.error(
            S,
            "prefix",
            "must not start with '/' (S3 keys have no leading slash)",
        );
    }
    // "ssh" and "ssh/" both mean the folder ssh/: objects are {prefix}{group}/authorized_keys.
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    let sse = match raw.sse.as_deref() {
        None => {
            if raw.kms_key_id.is_some() {
                check.error(S, "kms_key_id", "only applies with sse = \"aws:kms\"");
            }
            None
        }
        Some("AES256") => Some(ServerSideEncryption::Aes256),
        Some("aws:kms") => Some(ServerSideEncryption::Kms {
            key_id: raw.kms_key_id,
        }),
        Some(other) => {
            check.error(
                S,
                "sse",
                format!("{other:?} is not \"AES256\" or \"aws:kms\""),
            );
            None
        }
    };
    if let Some(endpoint) = &raw.endpoint
        && !endpoint.starts_with("https://")
        && !endpoint.starts_with("http://")
    {
        check.error(
            S,
            "endpoint",
            format!("{endpoint:?} must be an http(s):// URL"),
        );
    }
    Some(S3Settings {
        bucket: bucket?,
        prefix,
        region: raw.region,
        endpoint: raw.endpoint,
        force_path_style: raw.force_path_style.unwrap_or(false),
        sse,
    })
}
