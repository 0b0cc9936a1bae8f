//! The bucket: what the publisher writes to S3, how it is named, and how a reader trusts it.
//!
//! This is the contract between the sides. The publisher writes it; instances, the canary,
//! `verify` and `whois` read it, and import nothing else of the publisher's world.
//! [`store`] is the object store (S3 behind a trait); [`index`] the signed index naming every
//! object; [`group_file`], [`group_lookup`] and [`group_seal`] one access group's file, its
//! fingerprint lookup and its per-group signature; [`signing`] the keys and signatures;
//! [`trust`] the rules every reader applies (deployment, format, freshness, succession);
//! [`published`] reads what is there now.

pub mod group_file;
pub mod group_lookup;
pub mod group_seal;
pub mod index;
pub mod published;
pub mod signing;
pub mod store;
pub mod trust;
