//! The S3 store against a real local S3 server (s3s-fs): conditional writes are what detects a
//! concurrent publisher on another host, and conditional reads are what keeps a login cheap.

use crate::support::s3::{BUCKET, S3Server};
use keyhole::bucket::store::{Fetched, ObjectStore, Precondition, S3Store, StoreError, Timeouts};
use keyhole::settings::S3Settings;

async fn store(server: &S3Server) -> S3Store {
    crate::support::s3::export_credentials();
    let settings = S3Settings {
        bucket: BUCKET.into(),
        prefix: "ssh/".into(),
        region: Some("us-east-1".into()),
        endpoint: Some(server.endpoint()),
        force_path_style: true,
        sse: None,
    };
    S3Store::connect(&settings, Timeouts::PUBLISHER).await
}

#[tokio::test]
async fn conditional_writes_detect_a_concurrent_publisher_and_reads_skip_unchanged_objects() {
    let server = S3Server::start();
    let store = store(&server).await;
    // The index is the one object written conditionally: the commit point of a publish.
    let key = "ssh/index.json";

    assert_eq!(store.get(key, None).await.unwrap(), Fetched::Missing);
    let first = store
        .put(key, b"one".to_vec(), Precondition::Absent)
        .await
        .unwrap();

    // Another publisher that also saw "no index" must not overwrite it.
    let lost_race = store.put(key, b"two".to_vec(), Precondition::Absent).await;
    assert!(
        matches!(lost_race, Err(StoreError::Conflict { .. })),
        "{lost_race:?}"
    );

    // A publisher holding a stale ETag must not overwrite it either.
    let second = store
        .put(key, b"two".to_vec(), Precondition::Matches(first.clone()))
        .await
        .unwrap();
    let stale = store
        .put(key, b"three".to_vec(), Precondition::Matches(first.clone()))
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    assert_eq!(server.object(key).unwrap(), "two");

    // Conditional reads: unchanged → NotModified, changed → the new bytes.
    assert_eq!(
        store.get(key, Some(&second)).await.unwrap(),
        Fetched::NotModified
    );
    match store.get(key, Some(&first)).await.unwrap() {
        Fetched::Object(object) => {
            assert_eq!(object.body, b"two");
            assert_eq!(object.etag, second);
        }
        other => panic!("expected the object, got {other:?}"),
    }
    assert_eq!(store.list("ssh/").await.unwrap(), [key]);
    store.delete(key).await.unwrap();
    assert_eq!(store.get(key, None).await.unwrap(), Fetched::Missing);
    // Four PUT attempts (two refused) and one DELETE.
    assert_eq!(store.counts.writes(), 5);

    // Whoever writes to the bucket chooses object sizes; a reader refuses one past its bound
    // instead of holding it all in memory.
    let big = "ssh/web/huge";
    store
        .put(big, vec![b'k'; 4097], Precondition::None)
        .await
        .unwrap();
    let small = store.clone().with_max_object_bytes(4096);
    let refused = small.get(big, None).await;
    assert!(
        matches!(refused, Err(StoreError::TooLarge { limit: 4096, .. })),
        "{:?}",
        refused.map(|_| "read it whole")
    );
    let exact = "ssh/web/exact";
    store
        .put(exact, vec![b'k'; 4096], Precondition::None)
        .await
        .unwrap();
    match small.get(exact, None).await.unwrap() {
        Fetched::Object(object) => assert_eq!(object.body.len(), 4096),
        other => panic!("expected the object, got {other:?}"),
    }
    assert_eq!(keyhole::bucket::store::MAX_OBJECT_BYTES, 64 * 1024 * 1024);
}
