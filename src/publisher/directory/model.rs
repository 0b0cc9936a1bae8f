//! What keyhole knows about the directory once it has been read: users, groups and the domain's
//! own settings, as plain domain types converted from raw LDAP entries with `TryFrom`.
//!
//! The conversions are strict about what access depends on (a malformed `userAccountControl` is an
//! error, not "enabled") and lenient about what it does not (a missing `uidNumber` only matters to
//! the homes stage, which rejects such a user there).

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ldap3::SearchEntry;

/// A distinguished name, compared case-insensitively as AD does.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Dn(String);

impl Dn {
    pub fn new(dn: &str) -> Dn {
        Dn(dn.to_lowercase())
    }
}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Windows security identifier in its string form, `S-1-5-21-…`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Sid(String);

impl Sid {
    /// Decodes the binary `objectSid` layout: revision, sub-authority count, a 48-bit big-endian
    /// identifier authority, then little-endian 32-bit sub-authorities.
    pub fn from_bytes(bytes: &[u8]) -> Option<Sid> {
        let (&revision, rest) = bytes.split_first()?;
        let (&count, rest) = rest.split_first()?;
        let (authority, rest) = rest.split_at_checked(6)?;
        if rest.len() != usize::from(count) * 4 {
            return None;
        }
        let authority = authority
            .iter()
            .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte));
        let mut text = format!("S-{revision}-{authority}");
        for chunk in rest.chunks_exact(4) {
            let sub = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            text.push_str(&format!("-{sub}"));
        }
        Some(Sid(text))
    }

    /// The SID of the domain-relative identifier `rid` in this (domain) SID.
    pub fn with_rid(&self, rid: u32) -> Sid {
        Sid(format!("{}-{rid}", self.0))
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Windows FILETIME: 100-nanosecond intervals since 1601-01-01 UTC, as AD stores times.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct FileTime(pub i64);

/// Seconds between 1601-01-01 and 1970-01-01.
const FILETIME_UNIX_OFFSET_SECS: i64 = 11_644_473_600;

impl FileTime {
    pub fn from_system_time(time: SystemTime) -> FileTime {
        let since_unix = match time.duration_since(UNIX_EPOCH) {
            Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
            Err(before) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
        };
        let intervals = since_unix / 100 + i128::from(FILETIME_UNIX_OFFSET_SECS) * 10_000_000;
        FileTime(i64::try_from(intervals).unwrap_or(i64::MAX))
    }
}

/// `userAccountControl` bit: the account is disabled.
pub const ACCOUNTDISABLE: u32 = 0x2;

/// Why an account that exists may not log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    Active,
    Disabled,
    Locked,
    Expired,
}

/// A person's account (objectCategory=person, objectClass=user). Serialized only into the
/// publisher's directory state (`super::usn`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub dn: Dn,
    /// sAMAccountName exactly as AD spells it.
    pub name: String,
    pub sid: Option<Sid>,
    pub primary_group_id: Option<u32>,
    pub account_control: u32,
    /// 0 when never locked.
    pub lockout_time: FileTime,
    /// 0 or i64::MAX when the account never expires.
    pub account_expires: FileTime,
    pub uid_number: Option<u32>,
    pub unix_home_directory: Option<String>,
}

impl User {
    /// Whether the account may log in at `now`, given the domain's lockout duration.
    pub fn state(&self, now: FileTime, lockout: LockoutDuration) -> AccountState {
        if self.account_control & ACCOUNTDISABLE != 0 {
            return AccountState::Disabled;
        }
        if self.lockout_time.0 > 0 {
            let locked = match lockout {
                LockoutDuration::UntilUnlocked => true,
                LockoutDuration::For(intervals) => {
                    now.0 < self.lockout_time.0.saturating_add(intervals)
                }
            };
            if locked {
                return AccountState::Locked;
            }
        }
        let expires = self.account_expires.0;
        if expires != 0 && expires != i64::MAX && expires <= now.0 {
            return AccountState::Expired;
        }
        AccountState::Active
    }
}

/// A group (objectClass=group) with its direct members' DNs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub dn: Dn,
    /// sAMAccountName exactly as AD spells it.
    pub name: String,
    pub sid: Option<Sid>,
    pub members: Vec<Dn>,
}

/// How long a lockout lasts (the domain's `lockoutDuration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockoutDuration {
    /// Locked accounts stay locked until an administrator unlocks them.
    UntilUnlocked,
    /// In FILETIME intervals (100 ns).
    For(i64),
}

impl LockoutDuration {
    /// AD stores the duration as a negative interval; 0 and i64::MIN mean "until unlocked".
    pub fn from_attribute(value: i64) -> LockoutDuration {
        if value == 0 || value == i64::MIN {
            LockoutDuration::UntilUnlocked
        } else {
            LockoutDuration::For(value.saturating_abs())
        }
    }

    pub fn as_duration(self) -> Option<Duration> {
        match self {
            LockoutDuration::UntilUnlocked => None,
            LockoutDuration::For(intervals) => Some(Duration::from_nanos(
                u64::try_from(intervals).unwrap_or(0) * 100,
            )),
        }
    }
}

/// The domain object's settings that membership depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub sid: Sid,
    pub lockout_duration: LockoutDuration,
}

/// Everything read from the directory in one run.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub domain: Option<Domain>,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
}

/// A raw entry did not have the shape keyhole needs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("{dn}: missing attribute {attribute}")]
    Missing { dn: String, attribute: &'static str },
    #[error("{dn}: attribute {attribute} has the malformed value {value:?}")]
    Malformed {
        dn: String,
        attribute: &'static str,
        value: String,
    },
}

/// Attribute access on a raw entry, case-insensitive as LDAP attribute names are.
struct Attributes<'e> {
    entry: &'e SearchEntry,
}

impl<'e> Attributes<'e> {
    fn text(&self, name: &str) -> Option<&'e str> {
        find(&self.entry.attrs, name)
            .and_then(|values| values.first())
            .map(String::as_str)
    }

    fn required(&self, name: &'static str) -> Result<&'e str, EntryError> {
        self.text(name).ok_or_else(|| EntryError::Missing {
            dn: self.entry.dn.clone(),
            attribute: name,
        })
    }

    fn number<T: std::str::FromStr>(&self, name: &'static str) -> Result<Option<T>, EntryError> {
        self.text(name)
            .map(|value| {
                value.trim().parse().map_err(|_| EntryError::Malformed {
                    dn: self.entry.dn.clone(),
                    attribute: name,
                    value: value.to_owned(),
                })
            })
            .transpose()
    }

    fn sid(&self) -> Option<Sid> {
        find(&self.entry.bin_attrs, "objectSid")
            .and_then(|values| values.first())
            .and_then(|bytes| Sid::from_bytes(bytes))
    }
}

fn find<'m, V>(map: &'m HashMap<String, V>, name: &str) -> Option<&'m V> {
    map.iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
}

/// An entry's `objectGUID` in hex (the bytes as stored): what stays the same when the entry is
/// renamed or moved, so the directory state (`super::usn`) is keyed by it. A 16-byte value may
/// happen to be valid UTF-8, and then ldap3 hands it out as text: both are looked at.
pub fn object_guid(entry: &SearchEntry) -> Option<String> {
    find(&entry.bin_attrs, "objectGUID")
        .and_then(|values| values.first())
        .map(hex::encode)
        .or_else(|| {
            find(&entry.attrs, "objectGUID")
                .and_then(|values| values.first())
                .map(|text| hex::encode(text.as_bytes()))
        })
        .filter(|guid| guid.len() == 32)
}

/// The attributes read for users.
pub const USER_ATTRIBUTES: &[&str] = &[
    "sAMAccountName",
    "objectSid",
    "primaryGroupID",
    "userAccountControl",
    "lockoutTime",
    "accountExpires",
    "uidNumber",
    "unixHomeDirectory",
];

impl TryFrom<&SearchEntry> for User {
    type Error = EntryError;

    fn try_from(entry: &SearchEntry) -> Result<User, EntryError> {
        let attributes = Attributes { entry };
        Ok(User {
            dn: Dn::new(&entry.dn),
            name: attributes.required("sAMAccountName")?.to_owned(),
            sid: attributes.sid(),
            primary_group_id: attributes.number("primaryGroupID")?,
            // Access depends on this one: refuse to guess when it is absent.
            account_control: attributes.number("userAccountControl")?.ok_or_else(|| {
                EntryError::Missing {
                    dn: entry.dn.clone(),
                    attribute: "userAccountControl",
                }
            })?,
            lockout_time: FileTime(attributes.number("lockoutTime")?.unwrap_or(0)),
            account_expires: FileTime(attributes.number("accountExpires")?.unwrap_or(0)),
            uid_number: attributes.number("uidNumber")?,
            unix_home_directory: attributes.text("unixHomeDirectory").map(str::to_owned),
        })
    }
}

/// Builds a group from its entry and the complete list of member DNs (which may have needed
/// ranged reads to collect, see `ldap::read_members`).
pub fn group_from_entry(entry: &SearchEntry, members: Vec<Dn>) -> Result<Group, EntryError> {
    let attributes = Attributes { entry };
    Ok(Group {
        dn: Dn::new(&entry.dn),
        name: attributes.required("sAMAccountName")?.to_owned(),
        sid: attributes.sid(),
        members,
    })
}

impl TryFrom<&SearchEntry> for Domain {
    type Error = EntryError;

    fn try_from(entry: &SearchEntry) -> Result<Domain, EntryError> {
        let attributes = Attributes { entry };
        let sid = attributes.sid().ok_or_else(|| EntryError::Missing {
            dn: entry.dn.clone(),
            attribute: "objectSid",
        })?;
        let lockout = attributes.number("lockoutDuration")?.unwrap_or(0);
        Ok(Domain {
            sid,
            lockout_duration: LockoutDuration::from_attribute(lockout),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dn: &str, attrs: &[(&str, &str)], sid: Option<Vec<u8>>) -> SearchEntry {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (name, value) in attrs {
            map.entry(name.to_string())
                .or_default()
                .push(value.to_string());
        }
        let mut bin_attrs = HashMap::new();
        if let Some(sid) = sid {
            bin_attrs.insert("objectSid".to_string(), vec![sid]);
        }
        SearchEntry {
            dn: dn.to_string(),
            attrs: map,
            bin_attrs,
        }
    }

    /// S-1-5-21-1-2-3-1105 in objectSid's binary layout.
    fn sid_bytes() -> Vec<u8> {
        let mut bytes = vec![1, 5, 0, 0, 0, 0, 0, 5];
        for sub in [21u32, 1, 2, 3, 1105] {
            bytes.extend_from_slice(&sub.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn sids_decode_from_their_binary_form() {
        let sid = Sid::from_bytes(&sid_bytes()).unwrap();
        assert_eq!(sid.to_string(), "S-1-5-21-1-2-3-1105");
        assert_eq!(Sid::from_bytes(&sid_bytes()[..9]), None);
        assert_eq!(
            Sid(String::from("S-1-5-21-1-2-3"))
                .with_rid(513)
                .to_string(),
            "S-1-5-21-1-2-3-513"
        );
    }

    #[test]
    fn a_user_entry_converts_with_every_attribute() {
        let raw = entry(
            "CN=Jane Doe,CN=Users,DC=corp,DC=example,DC=com",
            &[
                ("sAMAccountName", "Jane.Doe"),
                ("userAccountControl", "512"),
                ("primaryGroupID", "513"),
                ("lockoutTime", "0"),
                ("accountExpires", "9223372036854775807"),
                ("uidNumber", "10001"),
                ("unixHomeDirectory", "/home/jane.doe"),
            ],
            Some(sid_bytes()),
        );
        let user = User::try_from(&raw).unwrap();
        assert_eq!(user.name, "Jane.Doe");
        assert_eq!(
            user.dn,
            Dn::new("cn=jane doe,cn=users,dc=corp,dc=example,dc=com")
        );
        assert_eq!(user.primary_group_id, Some(513));
        assert_eq!(user.uid_number, Some(10001));
        assert_eq!(user.unix_home_directory.as_deref(), Some("/home/jane.doe"));
        assert_eq!(user.sid.unwrap().to_string(), "S-1-5-21-1-2-3-1105");
    }

    #[test]
    fn a_user_without_account_control_or_with_garbage_is_an_error() {
        let raw = entry("CN=x", &[("sAMAccountName", "x")], None);
        assert_eq!(
            User::try_from(&raw),
            Err(EntryError::Missing {
                dn: "CN=x".into(),
                attribute: "userAccountControl"
            })
        );
        let raw = entry(
            "CN=x",
            &[("sAMAccountName", "x"), ("userAccountControl", "lots")],
            None,
        );
        assert!(matches!(
            User::try_from(&raw),
            Err(EntryError::Malformed { .. })
        ));
    }

    fn user(account_control: u32, lockout_time: i64, account_expires: i64) -> User {
        User {
            dn: Dn::new("cn=u"),
            name: "u".into(),
            sid: None,
            primary_group_id: None,
            account_control,
            lockout_time: FileTime(lockout_time),
            account_expires: FileTime(account_expires),
            uid_number: None,
            unix_home_directory: None,
        }
    }

    #[test]
    fn account_state_follows_control_lockout_and_expiry() {
        let at = |secs: u64| FileTime::from_system_time(UNIX_EPOCH + Duration::from_secs(secs));
        let now_secs = 1_800_000_000;
        let now = at(now_secs);
        let thirty_minutes = LockoutDuration::from_attribute(-18_000_000_000);
        assert_eq!(
            user(512, 0, 0).state(now, thirty_minutes),
            AccountState::Active
        );
        assert_eq!(
            user(514, 0, 0).state(now, thirty_minutes),
            AccountState::Disabled
        );
        // Locked a minute ago: still within thirty minutes.
        let a_minute_ago = at(now_secs - 60).0;
        assert_eq!(
            user(512, a_minute_ago, 0).state(now, thirty_minutes),
            AccountState::Locked
        );
        // Locked an hour ago: the lockout has lapsed on its own...
        let an_hour_ago = at(now_secs - 3600).0;
        assert_eq!(
            user(512, an_hour_ago, 0).state(now, thirty_minutes),
            AccountState::Active
        );
        // ...unless the domain locks until an administrator unlocks.
        let forever = LockoutDuration::UntilUnlocked;
        assert_eq!(
            user(512, an_hour_ago, 0).state(now, forever),
            AccountState::Locked
        );
        assert_eq!(
            user(512, 0, now.0 - 1).state(now, thirty_minutes),
            AccountState::Expired
        );
        assert_eq!(
            user(512, 0, now.0 + 1).state(now, thirty_minutes),
            AccountState::Active
        );
        assert_eq!(
            user(512, 0, i64::MAX).state(now, thirty_minutes),
            AccountState::Active
        );
    }

    #[test]
    fn filetime_counts_from_1601() {
        assert_eq!(
            FileTime::from_system_time(UNIX_EPOCH),
            FileTime(116_444_736_000_000_000)
        );
        assert_eq!(
            LockoutDuration::from_attribute(-18_000_000_000).as_duration(),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(
            LockoutDuration::from_attribute(i64::MIN),
            LockoutDuration::UntilUnlocked
        );
    }
}
