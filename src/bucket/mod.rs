//! The bucket: what the publisher writes to S3, how it is named, and how a reader trusts it.
//!
//! This is the contract between the sides. The publisher writes it; instances, the canary,
//! `verify` and `whois` read it, and import nothing else of the publisher's world.
//! [`store`] is the object store (S3 behind a trait; [`memory_store`] the same in memory, for
//! tests); [`deployment`] one bucket and prefix with its store, built once a run; [`index`] the
//! signed index naming every object, [`canary_line`] the audit canary's line in it;
//! [`group_file`] and [`group_lookup`] one access group's file and its fingerprint lookup with the
//! per-group seal; [`names`] the access group name rule; [`head`] the publisher's memory of the
//! index it last committed; [`signing`] the keys and signatures; [`trust`] the rules every reader
//! applies (deployment, format, freshness, succession); [`published`] reads what is there now;
//! [`verify`] judges all of it against the index; [`revocation_list`] is the list sshd's
//! `RevokedKeys` reads; [`local_copy`] the publisher's copies of the index and owners object,
//! read while their ETags hold.

pub mod canary_line;
pub mod deployment;
pub mod group_file;
pub mod group_lookup;
pub mod head;
pub mod index;
pub mod local_copy;
pub mod memory_store;
pub mod names;
pub mod published;
pub mod revocation_list;
pub mod signing;
pub mod store;
pub mod trust;
pub mod verify;
