//! One deployment: the store that reaches the bucket, where keyhole's objects are in it, and the
//! name every index of this deployment carries. Built once per run ([`Deployment::connect`]) from
//! the `[s3]` settings, instead of a client, a [`Layout`] and a name assembled at each use.
//!
//! Generic over the store so the steps that take one (the commit protocol, prune) run against
//! [`MemoryStore`](super::memory_store::MemoryStore) in tests; it holds no logic.

use crate::bucket::index::Layout;
use crate::bucket::store::{S3Store, Timeouts};
use crate::settings::S3Settings;

pub struct Deployment<S = S3Store> {
    pub store: S,
    pub layout: Layout,
    pub bucket: String,
    /// `s3://{bucket}/{prefix}`: what the index names as its deployment
    /// ([`crate::bucket::index::deployment`]), so an index copied in from another one is refused.
    pub name: String,
}

impl Deployment<S3Store> {
    /// The deployment the `[s3]` settings name, reached with `timeouts`.
    pub async fn connect(s3: &S3Settings, timeouts: Timeouts) -> Deployment<S3Store> {
        Deployment::new(S3Store::connect(s3, timeouts).await, &s3.bucket, &s3.prefix)
    }
}

impl<S> Deployment<S> {
    pub fn new(store: S, bucket: &str, prefix: &str) -> Deployment<S> {
        Deployment {
            store,
            layout: Layout {
                prefix: prefix.to_owned(),
            },
            bucket: bucket.to_owned(),
            name: crate::bucket::index::deployment(bucket, prefix),
        }
    }
}
