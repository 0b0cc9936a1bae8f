//! The directory (AD) stage: reads users, groups and the domain's lockout settings in bulk, and
//! hands back a [`Snapshot`] of plain domain types. Expanding membership is not done here but in
//! the pure [`crate::publisher::resolve`] step, so it can be tested without a server. Which DC is asked is
//! [`discovery`]'s business; never locking the service account is [`bind_guard`]'s; binding with a
//! keytab instead of a password is [`kerberos`]'s; reading only what changed since the last run
//! is [`usn`]'s.

pub mod bind_guard;
pub mod discovery;
pub mod kerberos;
pub mod ldap;
pub mod model;
pub mod usn;

pub use ldap::{
    BoundIdentity, DcReading, DirectoryError, ReadStats, check_bind, is_bind_refusal, read_snapshot,
};
pub use model::{AccountState, Dn, Domain, FileTime, Group, LockoutDuration, Sid, Snapshot, User};
