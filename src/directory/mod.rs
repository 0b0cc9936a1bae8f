//! The directory (AD) stage: reads users, groups and the domain's lockout settings in bulk, and
//! hands back a [`Snapshot`] of plain domain types. Expanding membership is not done here but in
//! the pure [`crate::resolve`] step, so it can be tested without a server.

pub mod ldap;
pub mod model;

pub use ldap::{DirectoryError, ReadStats, read_snapshot};
pub use model::{AccountState, Dn, Domain, FileTime, Group, LockoutDuration, Sid, Snapshot, User};
