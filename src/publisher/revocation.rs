//! The revocation list: which keys every host must refuse on every login path, computed by the
//! publisher and written by instances for sshd's `RevokedKeys`.
//!
//! `AuthorizedKeysCommand` decides only what keyhole prints. sshd also reads the login user's own
//! `~/.ssh/authorized_keys` (where a departing engineer may have planted a key), root's, EC2
//! Instance Connect's keys, and a stale cache on a host that stopped refreshing. `RevokedKeys` is
//! checked before all of them, so the list keyhole distributes reaches every path.
//!
//! The owners object remembers, for every key that stops being published, who owned it and when
//! it stopped ([`OwnerRecord::ended`]), for `keys.revocation_retention` (default 90 days). The
//! list is, deterministically (same records, `[deny]` and time → same bytes):
//! - every key whose record has `ended` (published within the retention, not published now:
//!   its person was disabled, deleted, expired, left every group, or removed the key), and
//! - every key `[deny]` names, by fingerprint or by user (a denied person's records are kept as
//!   long as they are denied, whatever the retention).
//!
//! A `[deny] fingerprints` entry whose key keyhole never saw (in no record and in no home read
//! this run) cannot be written for sshd: a public-key list names keys, not fingerprints, and KRL
//! fingerprint sections need OpenSSH 7.9 (the oldest supported sshd is 7.4). It is kept in the
//! list as a comment, reported by the publisher, and refused only where keyhole decides (it is
//! never served by `AuthorizedKeysCommand`).
//!
//! The object (`{prefix}_keyhole/revoked/{sha256}`, named by the signed index) is already in the
//! format sshd reads: a header comment, then `TYPE BASE64 SHA256:…` per key sorted by
//! fingerprint, then `# SHA256:… …` for the fingerprints without a key. An instance still checks
//! every line before writing it ([`parse_list`]): one line sshd cannot parse would make it refuse
//! every key.
//!
//! The safety guard: a directory outage or a bug must never revoke everyone's keys. People removed
//! from an access group are judged by the removal guard already; this one counts the people who
//! keep their access but whose keys would go on the list (a harvest bug reading other keys for
//! everyone, say): more than `safety.max_removed_fraction` of the people with published keys (at
//! least 4), or more than `safety.max_removed_users`, and the plan is held like a mass removal.
//! Additions caused by `[deny]`, by a grant past its `until`, or by a canary rotation never are.
//!
//! Everything here is pure (the time is passed in) but [`write`], the one object it stores.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use crate::bucket::index::{Index, Layout, OwnerRecord, OwnerRecords, Owners, REVOKED_PREFIX};
use crate::publisher::render::UserKeys;
use crate::settings::SafetySettings;

use crate::bucket::revocation_list::{UNKNOWN_OWNER, render_list};

/// Who the owners object records the audit canary's key for (a name no AD account can have).
pub const CANARY_OWNER: &str = "keyhole:canary";

/// People with published keys below which the guard does not judge a fraction (one of three is
/// already a third), as the removal guard does for a group.
const GUARD_MIN_PEOPLE: usize = 4;

/// A key published by this run: its person and `TYPE BASE64` (unknown for a key carried over
/// from the first owners format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub user: String,
    pub key: Option<String>,
}

/// What the next owners object and list are computed from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The published owners object's records.
    pub previous: &'a OwnerRecords,
    /// Every key this run publishes, by fingerprint.
    pub published: &'a BTreeMap<String, Published>,
    /// Every key read from a home this run (any person), by fingerprint: where the key of a
    /// denied fingerprint is found when no record has it.
    pub seen: &'a BTreeMap<String, String>,
    pub deny_fingerprints: &'a BTreeSet<String>,
    pub deny_users: &'a BTreeSet<String>,
    pub now: SystemTime,
    pub retention: Duration,
}

/// The next owners object and revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    pub records: OwnerRecords,
    /// The list object's bytes.
    pub list: Vec<u8>,
    /// Revoked keys (with a key to write), by fingerprint, with their person when known.
    pub revoked: BTreeMap<String, Option<String>>,
    /// `[deny]` fingerprints whose key keyhole never saw: in the list as comments only.
    pub unenforceable: Vec<String>,
}

/// The records still binding at `now`: an ended record older than the retention is dropped,
/// unless `[deny]` names its key or its person.
pub fn retained(
    records: &OwnerRecords,
    now: SystemTime,
    retention: Duration,
    deny_fingerprints: &BTreeSet<String>,
    deny_users: &BTreeSet<String>,
) -> OwnerRecords {
    records
        .iter()
        .filter(|(fingerprint, record)| {
            let Some(ended) = &record.ended else {
                return true;
            };
            if deny_fingerprints.contains(*fingerprint) || deny_users.contains(&record.user) {
                return true;
            }
            // An unreadable time (edited by hand?) is kept: dropping it would un-revoke a key.
            crate::bucket::signing::parse_time(ended).map_or(true, |ended| now < ended + retention)
        })
        .map(|(fingerprint, record)| (fingerprint.clone(), record.clone()))
        .collect()
}

/// Whether someone holds a key that a record gives to someone else: then the run must render
/// with the records ([`owners_view`]), so the key stays with its owner.
pub fn taken_over(records: &OwnerRecords, keys: &BTreeMap<String, UserKeys>) -> bool {
    keys.iter().any(|(user, keys)| match keys {
        UserKeys::Known(list) => list.iter().any(|key| {
            records
                .get(key.fingerprint.as_str())
                .is_some_and(|record| &record.user != user && record.user != UNKNOWN_OWNER)
        }),
        UserKeys::Unknown(_) => false,
    })
}

/// Every key read from a home, by fingerprint (`TYPE BASE64`).
pub fn seen_keys(keys: &BTreeMap<String, UserKeys>) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    for list in keys.values() {
        if let UserKeys::Known(list) = list {
            for key in list {
                seen.entry(key.fingerprint.as_str().to_owned())
                    .or_insert_with(|| format!("{} {}", key.key_type, key.blob));
            }
        }
    }
    seen
}

/// The keys this run publishes: `owners` (fingerprint → person, carried keys included) with each
/// key from the homes, else from the previous record.
pub fn published_keys(
    owners: &Owners,
    seen: &BTreeMap<String, String>,
    previous: &OwnerRecords,
) -> BTreeMap<String, Published> {
    owners
        .iter()
        .map(|(fingerprint, user)| {
            let key = seen
                .get(fingerprint)
                .cloned()
                .or_else(|| previous.get(fingerprint).and_then(|r| r.key.clone()));
            (
                fingerprint.clone(),
                Published {
                    user: user.clone(),
                    key,
                },
            )
        })
        .collect()
}

/// Computes the next owners object and the revocation list.
pub fn next(inputs: Inputs<'_>) -> Next {
    let now_text = crate::bucket::signing::format_time(inputs.now);
    let retained = retained(
        inputs.previous,
        inputs.now,
        inputs.retention,
        inputs.deny_fingerprints,
        inputs.deny_users,
    );
    let mut records: OwnerRecords = inputs
        .published
        .iter()
        .map(|(fingerprint, published)| {
            let record = OwnerRecord {
                user: published.user.clone(),
                key: published.key.clone(),
                ended: None,
            };
            (fingerprint.clone(), record)
        })
        .collect();
    for (fingerprint, record) in retained {
        records.entry(fingerprint).or_insert_with(|| OwnerRecord {
            ended: record.ended.or_else(|| Some(now_text.clone())),
            ..record
        });
    }
    let mut revoked: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    for (fingerprint, record) in &records {
        let denied = inputs.deny_users.contains(&record.user)
            || inputs.deny_fingerprints.contains(fingerprint);
        if let (Some(key), true) = (&record.key, record.ended.is_some() || denied) {
            revoked.insert(
                fingerprint.clone(),
                (key.clone(), Some(record.user.clone())),
            );
        }
    }
    let mut unenforceable = Vec::new();
    for fingerprint in inputs.deny_fingerprints {
        if revoked.contains_key(fingerprint) {
            continue;
        }
        match inputs.seen.get(fingerprint) {
            Some(key) => {
                revoked.insert(fingerprint.clone(), (key.clone(), None));
            }
            None => unenforceable.push(fingerprint.clone()),
        }
    }
    let list = render_list(
        revoked
            .iter()
            .map(|(fingerprint, (key, _))| (fingerprint.as_str(), key.as_str())),
        &unenforceable,
    );
    Next {
        records,
        list,
        revoked: revoked
            .into_iter()
            .map(|(fingerprint, (_, user))| (fingerprint, user))
            .collect(),
        unenforceable,
    }
}

/// Why the guard holds the growth of the list, if it does. `previous` is the published records,
/// `next` this run's. Counted are keys that go on the list while their person keeps their access:
/// people in `exempt` (removed from an access group, judged by the removal guard already, or
/// removed for `[deny]` or a grant past its `until`, never held) and keys `[deny]` names do not
/// count.
pub fn judge(
    previous: &OwnerRecords,
    next: &Next,
    exempt: &BTreeSet<&str>,
    deny_fingerprints: &BTreeSet<String>,
    safety: &SafetySettings,
) -> Vec<String> {
    let before: BTreeSet<&str> = previous
        .values()
        .filter(|r| r.ended.is_none() && r.user != CANARY_OWNER)
        .map(|r| r.user.as_str())
        .collect();
    let mut people = BTreeSet::new();
    let mut added = 0;
    for (fingerprint, user) in &next.revoked {
        let was_active = previous.get(fingerprint).is_some_and(|r| r.ended.is_none());
        let Some(user) = user.as_deref() else {
            continue;
        };
        if !was_active
            || deny_fingerprints.contains(fingerprint)
            || exempt.contains(user)
            || user == CANARY_OWNER
        {
            continue;
        }
        added += 1;
        people.insert(user);
    }
    let mut reasons = Vec::new();
    let fraction = people.len() as f64 / before.len().max(1) as f64;
    if before.len() >= GUARD_MIN_PEOPLE && fraction > safety.max_removed_fraction {
        reasons.push(format!(
            "the revocation list would grow by {added} keys of {} people who keep their access \
             ({:.0}% of the {} people with published keys > max_removed_fraction {:.0}%)",
            people.len(),
            fraction * 100.0,
            before.len(),
            safety.max_removed_fraction * 100.0
        ));
    }
    if people.len() > safety.max_removed_users {
        reasons.push(format!(
            "the revocation list would grow by {added} keys of {} people who keep their access \
             (> max_removed_users {})",
            people.len(),
            safety.max_removed_users
        ));
    }
    reasons
}

/// Writes the list object at its content address (before the index that names it is committed).
pub async fn write(
    store: &impl crate::bucket::store::ObjectStore,
    layout: &Layout,
    list: &[u8],
) -> anyhow::Result<()> {
    let key = layout.revoked(&crate::digest::sha256_hex(list));
    store
        .put(
            &key,
            list.to_vec(),
            crate::bucket::store::Precondition::None,
        )
        .await
        .context("writing the revocation list; the index was not committed")?;
    Ok(())
}

/// What a prune after a commit keeps of the list objects: the ones the previous and the next
/// index name (an instance that read the previous index a moment ago may still fetch it).
pub fn keep(layout: &Layout, indexes: [&Index; 2]) -> (String, BTreeSet<String>) {
    let keep = indexes
        .into_iter()
        .filter_map(|index| index.revoked.as_deref().map(|sha| layout.revoked(sha)))
        .collect();
    (format!("{}{REVOKED_PREFIX}", layout.prefix), keep)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::bucket::index::records_from_json;
    use crate::bucket::revocation_list::{
        HEADER, ListError, owners_view, parse_list, records_from_list,
    };

    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ+IR8TskynvftW3EfRyCVskOiAVP6iaiVeXwIV7bhM8";

    fn fingerprint(key: &str) -> String {
        ssh_key::PublicKey::from_openssh(key)
            .unwrap()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string()
    }

    fn at(text: &str) -> SystemTime {
        crate::bucket::signing::parse_time(text).unwrap()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    fn published(entries: &[(&str, &str)]) -> BTreeMap<String, Published> {
        entries
            .iter()
            .map(|(user, key)| {
                (
                    fingerprint(key),
                    Published {
                        user: (*user).to_owned(),
                        key: Some((*key).to_owned()),
                    },
                )
            })
            .collect()
    }

    struct Case {
        previous: OwnerRecords,
        published: BTreeMap<String, Published>,
        seen: BTreeMap<String, String>,
        deny_fingerprints: BTreeSet<String>,
        deny_users: BTreeSet<String>,
    }

    impl Case {
        fn new(previous: OwnerRecords, published: BTreeMap<String, Published>) -> Case {
            Case {
                previous,
                published,
                seen: BTreeMap::new(),
                deny_fingerprints: BTreeSet::new(),
                deny_users: BTreeSet::new(),
            }
        }

        fn next(&self, now: &str) -> Next {
            next(Inputs {
                previous: &self.previous,
                published: &self.published,
                seen: &self.seen,
                deny_fingerprints: &self.deny_fingerprints,
                deny_users: &self.deny_users,
                now: at(now),
                retention: 90 * DAY,
            })
        }
    }

    #[test]
    fn records_rebuilt_from_the_list_keep_every_key_revoked_and_bind_it_to_nobody() {
        // alice was disabled: her key is on the published list. Then the owners object is
        // deleted; the records are rebuilt from the list.
        let second = Case::new(
            Case::new(
                OwnerRecords::new(),
                published(&[("alice", ED_A), ("bob", ED_B)]),
            )
            .next("2026-01-01T00:00:00Z")
            .records,
            published(&[("bob", ED_B)]),
        )
        .next("2026-01-02T00:00:00Z");
        let listed = parse_list(&second.list).unwrap();
        let rebuilt = records_from_list(&listed, at("2026-01-05T00:00:00Z"));
        let a = fingerprint(ED_A);
        assert_eq!(rebuilt[&a].user, UNKNOWN_OWNER);
        // The next run, from the rebuilt records, still revokes her key...
        let next =
            Case::new(rebuilt.clone(), published(&[("bob", ED_B)])).next("2026-01-05T00:00:00Z");
        assert_eq!(next.list, second.list);
        // ...binds it to nobody (anyone holding it may publish it again)...
        assert!(!owners_view(&rebuilt).contains_key(&a));
        // ...and a key published again leaves the list.
        let back = Case::new(rebuilt, published(&[("alice", ED_A), ("bob", ED_B)]))
            .next("2026-01-06T00:00:00Z");
        assert!(back.revoked.is_empty());
    }

    #[test]
    fn a_key_that_stops_being_published_is_revoked_for_the_retention_then_forgotten() {
        let first = Case::new(
            OwnerRecords::new(),
            published(&[("alice", ED_A), ("bob", ED_B)]),
        )
        .next("2026-01-01T00:00:00Z");
        assert!(first.revoked.is_empty());
        assert_eq!(first.list, format!("{HEADER}\n").into_bytes());

        // alice is disabled: her key is revoked, and remembered as hers.
        let second = Case::new(first.records.clone(), published(&[("bob", ED_B)]))
            .next("2026-01-02T00:00:00Z");
        let a = fingerprint(ED_A);
        assert_eq!(second.records[&a].user, "alice");
        assert_eq!(
            second.records[&a].ended.as_deref(),
            Some("2026-01-02T00:00:00Z")
        );
        assert_eq!(
            second.revoked,
            BTreeMap::from([(a.clone(), Some("alice".to_owned()))])
        );
        assert_eq!(
            String::from_utf8(second.list.clone()).unwrap(),
            format!("{HEADER}\n{ED_A} {a}\n")
        );
        // Deterministic, and the end time does not move on the next run.
        let third = Case::new(second.records.clone(), published(&[("bob", ED_B)]))
            .next("2026-02-01T00:00:00Z");
        assert_eq!(third.records, second.records);
        assert_eq!(third.list, second.list);
        // Past the retention it is forgotten.
        let later = Case::new(second.records.clone(), published(&[("bob", ED_B)]))
            .next("2026-04-02T00:00:01Z");
        assert!(!later.records.contains_key(&a));
        assert!(later.revoked.is_empty());
        // Re-enabled: published again, off the list.
        let back = Case::new(second.records, published(&[("alice", ED_A), ("bob", ED_B)]))
            .next("2026-01-03T00:00:00Z");
        assert!(back.revoked.is_empty());
        assert_eq!(back.records[&a].ended, None);
    }

    #[test]
    fn deny_revokes_by_fingerprint_and_by_user_and_outlives_the_retention() {
        let a = fingerprint(ED_A);
        let b = fingerprint(ED_B);
        let previous = Case::new(
            OwnerRecords::new(),
            published(&[("alice", ED_A), ("bob", ED_B)]),
        )
        .next("2026-01-01T00:00:00Z")
        .records;
        let mut case = Case::new(previous, BTreeMap::new());
        case.deny_users.insert("alice".into());
        case.deny_fingerprints.insert(b.clone());
        let unknown = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned();
        case.deny_fingerprints.insert(unknown.clone());
        let next = case.next("2027-01-01T00:00:00Z");
        assert_eq!(next.revoked.len(), 2, "{next:?}");
        assert_eq!(next.unenforceable, std::slice::from_ref(&unknown));
        let text = String::from_utf8(next.list).unwrap();
        assert!(text.contains(&format!("{ED_A} {a}\n")), "{text}");
        assert!(text.contains(&format!("# {unknown} denied")), "{text}");
        // A denied key nobody has a record of, seen in a home this run, is written with its key.
        let mut case = Case::new(OwnerRecords::new(), BTreeMap::new());
        case.deny_fingerprints.insert(a.clone());
        case.seen.insert(a.clone(), ED_A.to_owned());
        assert_eq!(
            case.next("2026-01-01T00:00:00Z").revoked,
            BTreeMap::from([(a, None)])
        );
    }

    #[test]
    fn the_guard_holds_a_mass_addition_but_never_deny() {
        let keys: Vec<String> = (0..8)
            .map(|i| {
                let keypair = ssh_key::private::Ed25519Keypair::from_seed(&[i; 32]);
                let key = ssh_key::PrivateKey::new(keypair.into(), "").unwrap();
                key.public_key().to_openssh().unwrap()
            })
            .collect();
        let everyone: Vec<(String, &str)> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| (format!("p{i}"), key.as_str()))
            .collect();
        let named: Vec<(&str, &str)> = everyone.iter().map(|(u, k)| (u.as_str(), *k)).collect();
        let previous = Case::new(OwnerRecords::new(), published(&named))
            .next("2026-01-01T00:00:00Z")
            .records;
        let safety = SafetySettings {
            max_removed_fraction: 0.25,
            max_removed_users: 20,
            lock_file: PathBuf::from("/nonexistent"),
        };
        let none = BTreeSet::new();
        let no_fingerprints = BTreeSet::new();
        // Two of eight: within the guard.
        let next = Case::new(previous.clone(), published(&named[2..])).next("2026-01-02T00:00:00Z");
        assert!(judge(&previous, &next, &none, &no_fingerprints, &safety).is_empty());
        // Six of eight: held.
        let next = Case::new(previous.clone(), published(&named[6..])).next("2026-01-02T00:00:00Z");
        let reasons = judge(&previous, &next, &none, &no_fingerprints, &safety);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].contains("grow by 6 keys of 6 people"),
            "{reasons:?}"
        );
        // The same six people denied: never held.
        let denied: BTreeSet<&str> = everyone[..6].iter().map(|(u, _)| u.as_str()).collect();
        assert!(judge(&previous, &next, &denied, &no_fingerprints, &safety).is_empty());
    }

    #[test]
    fn a_list_is_checked_line_by_line() {
        let a = fingerprint(ED_A);
        let good = format!("{HEADER}\n{ED_A} {a}\n# SHA256:x denied\n");
        assert_eq!(parse_list(good.as_bytes()).unwrap().len(), 1);
        assert_eq!(parse_list(b"ssh-ed25519 AAAA x\n"), Err(ListError::Header));
        let wrong = format!("{HEADER}\n{ED_A} {}\n", fingerprint(ED_B));
        assert!(matches!(
            parse_list(wrong.as_bytes()),
            Err(ListError::Line { line: 2, .. })
        ));
        let garbage = format!("{HEADER}\nssh-ed25519 AAAA!! {a}\n");
        assert!(parse_list(garbage.as_bytes()).is_err());
        // A type that is not the blob's.
        let mislabelled = format!("{HEADER}\n{} {a}\n", ED_A.replace("ssh-ed25519", "ssh-rsa"));
        assert!(parse_list(mislabelled.as_bytes()).is_err());
    }

    #[test]
    fn the_owners_object_reads_both_formats() {
        let a = fingerprint(ED_A);
        let old = format!("{{\"{a}\":\"alice\"}}");
        let records = records_from_json(old.as_bytes()).unwrap();
        assert_eq!(records[&a].user, "alice");
        assert_eq!(records[&a].key, None);
        let next = Case::new(OwnerRecords::new(), published(&[("alice", ED_A)]))
            .next("2026-01-01T00:00:00Z");
        let json = crate::bucket::index::records_to_json(&next.records);
        assert_eq!(records_from_json(&json).unwrap(), next.records);
        assert_eq!(
            String::from_utf8(json).unwrap(),
            format!("{{\"{a}\":{{\"user\":\"alice\",\"key\":\"{ED_A}\"}}}}\n")
        );
    }
}
