//! A bucket in memory behind the same [`ObjectStore`] trait as [`S3Store`](super::store::S3Store),
//! so the commit protocol, prune, refresh and `verify` get fast tests without a server (and the
//! instance benchmark a fixture without one).
//!
//! It answers as S3 answers the requests keyhole makes: a conditional write whose condition no
//! longer holds fails with [`StoreError::Conflict`], as `S3Store` maps HTTP 412
//! (`If-None-Match: *` on a key that exists, `If-Match` with another ETag); `If-Match` on a key
//! that does not exist fails as S3's 404 does (a [`StoreError::Request`], not a conflict); a read
//! with the ETag the object still has is [`Fetched::NotModified`]. ETags change on every write,
//! even of the same bytes, so a test never passes because two writers happened to write the same
//! thing. One knob S3 lacks: [`MemoryStore::fail`] makes every request on a key fail as if S3
//! were down.
//!
//! Never used against a real deployment: nothing here is durable.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::bucket::store::{
    Fetched, ObjectStore, Precondition, RequestCounts, StoreError, StoredObject,
};
use crate::digest::sha256_hex;

/// The bucket name errors show.
const BUCKET: &str = "memory";

/// An in-memory bucket. Clones share the same objects, as two clients of one bucket do.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    /// Requests made through the trait (not through the test helpers), as [`S3Store`] counts.
    ///
    /// [`S3Store`]: super::store::S3Store
    pub counts: Arc<RequestCounts>,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, StoredObject>,
    /// Writes so far: part of every ETag, so no two writes share one.
    writes: u64,
    /// Keys (and list prefixes) whose requests fail.
    failing: BTreeSet<String>,
}

impl Inner {
    fn store(&mut self, key: &str, body: Vec<u8>) -> String {
        self.writes += 1;
        let sha256 = sha256_hex(&body);
        // Quoted, as S3 sends them.
        let etag = format!("\"{}-{}\"", &sha256[..16], self.writes);
        self.objects.insert(
            key.to_owned(),
            StoredObject {
                body,
                etag: etag.clone(),
            },
        );
        etag
    }

    fn check(&self, operation: &'static str, key: &str) -> Result<(), StoreError> {
        if self.failing.contains(key) {
            return Err(request_error(
                operation,
                key,
                "the store is down (MemoryStore::fail)",
            ));
        }
        Ok(())
    }
}

fn request_error(operation: &'static str, key: &str, detail: &str) -> StoreError {
    StoreError::Request {
        operation,
        bucket: BUCKET.to_owned(),
        key: key.to_owned(),
        detail: detail.to_owned(),
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock left whole objects behind: every change
        // is one insert or remove.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `body` to `key` whatever is there, as someone with write access to the bucket
    /// would; returns the new ETag. Not counted as a request.
    pub fn insert(&self, key: &str, body: impl Into<Vec<u8>>) -> String {
        self.lock().store(key, body.into())
    }

    /// The bytes at `key`.
    pub fn body(&self, key: &str) -> Option<Vec<u8>> {
        self.lock()
            .objects
            .get(key)
            .map(|object| object.body.clone())
    }

    /// The ETag the object at `key` has now.
    pub fn etag(&self, key: &str) -> Option<String> {
        self.lock()
            .objects
            .get(key)
            .map(|object| object.etag.clone())
    }

    /// Removes `key`; returns whether it was there. Not counted as a request.
    pub fn remove(&self, key: &str) -> bool {
        self.lock().objects.remove(key).is_some()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.lock().objects.keys().cloned().collect()
    }

    /// From now on every request on `key` (a LIST: on exactly this prefix) fails.
    pub fn fail(&self, key: &str) {
        self.lock().failing.insert(key.to_owned());
    }

    /// Every request succeeds again.
    pub fn heal(&self) {
        self.lock().failing.clear();
    }
}

impl ObjectStore for MemoryStore {
    async fn get(&self, key: &str, etag: Option<&str>) -> Result<Fetched, StoreError> {
        self.counts.gets.fetch_add(1, Ordering::Relaxed);
        let inner = self.lock();
        inner.check("GET", key)?;
        let Some(object) = inner.objects.get(key) else {
            return Ok(Fetched::Missing);
        };
        if etag == Some(object.etag.as_str()) {
            return Ok(Fetched::NotModified);
        }
        self.counts
            .bytes_read
            .fetch_add(object.body.len(), Ordering::Relaxed);
        Ok(Fetched::Object(object.clone()))
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
        let mut inner = self.lock();
        inner.check("PUT", key)?;
        let current = inner.objects.get(key).map(|object| object.etag.as_str());
        let conflict = || StoreError::Conflict {
            bucket: BUCKET.to_owned(),
            key: key.to_owned(),
        };
        match (&precondition, current) {
            (Precondition::None, _) | (Precondition::Absent, None) => {}
            (Precondition::Absent, Some(_)) => return Err(conflict()),
            (Precondition::Matches(_), None) => {
                return Err(request_error(
                    "PUT",
                    key,
                    "NoSuchKey: If-Match on an object that does not exist (HTTP 404)",
                ));
            }
            (Precondition::Matches(wanted), Some(current)) if wanted != current => {
                return Err(conflict());
            }
            (Precondition::Matches(_), Some(_)) => {}
        }
        Ok(inner.store(key, body))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.counts.deletes.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        inner.check("DELETE", key)?;
        // Deleting what is not there succeeds, as in S3.
        inner.objects.remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.counts.lists.fetch_add(1, Ordering::Relaxed);
        let inner = self.lock();
        inner.check("LIST", prefix)?;
        Ok(inner
            .objects
            .range(prefix.to_owned()..)
            .map(|(key, _)| key)
            .take_while(|key| key.starts_with(prefix))
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn conditional_writes_fail_as_s3_answers_them() {
        run(async {
            let store = MemoryStore::new();
            let first = store
                .put("p/index.json", b"1".to_vec(), Precondition::Absent)
                .await
                .unwrap();
            // Create-only on a key that exists: 412.
            let error = store
                .put("p/index.json", b"2".to_vec(), Precondition::Absent)
                .await
                .unwrap_err();
            assert!(matches!(error, StoreError::Conflict { .. }), "{error}");
            // The same bytes again still get a new ETag, so the first one no longer matches.
            let second = store
                .put(
                    "p/index.json",
                    b"1".to_vec(),
                    Precondition::Matches(first.clone()),
                )
                .await
                .unwrap();
            assert_ne!(first, second);
            let error = store
                .put("p/index.json", b"3".to_vec(), Precondition::Matches(first))
                .await
                .unwrap_err();
            assert!(matches!(error, StoreError::Conflict { .. }), "{error}");
            assert_eq!(store.body("p/index.json").unwrap(), b"1");
            // If-Match on nothing: S3's 404, not a conflict.
            let error = store
                .put("p/other", b"x".to_vec(), Precondition::Matches(second))
                .await
                .unwrap_err();
            assert!(matches!(error, StoreError::Request { .. }), "{error}");
            assert_eq!(store.counts.writes(), 5);
        });
    }

    #[test]
    fn reads_lists_deletes_and_failures() {
        run(async {
            let store = MemoryStore::new();
            let etag = store.insert("p/a/1", "one");
            store.insert("p/b/1", "two");
            store.insert("pa", "three");
            assert_eq!(
                store.get("p/a/1", Some(&etag)).await.unwrap(),
                Fetched::NotModified
            );
            let Fetched::Object(object) = store.get("p/a/1", Some("\"old\"")).await.unwrap() else {
                panic!("expected the object");
            };
            assert_eq!((object.body, object.etag), (b"one".to_vec(), etag));
            assert_eq!(store.get("p/c", None).await.unwrap(), Fetched::Missing);
            assert_eq!(store.list("p/").await.unwrap(), ["p/a/1", "p/b/1"]);
            store.delete("p/a/1").await.unwrap();
            store.delete("p/a/1").await.unwrap();
            assert_eq!(store.keys(), ["p/b/1", "pa"]);
            store.fail("p/b/1");
            assert!(store.get("p/b/1", None).await.is_err());
            store.heal();
            assert!(store.get("p/b/1", None).await.is_ok());
        });
    }
}
