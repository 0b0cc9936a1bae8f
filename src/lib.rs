//! keyhole: decides who may SSH into which servers.
//!
//! The tree is the architecture (see SPEC.md for the contract):
//! - [`publisher`]: policy + AD + NFS homes → signed objects in S3, one run at a time;
//! - [`bucket`]: what is in S3, how it is named and trusted — the contract between the sides;
//! - [`instance`]: sshd's `AuthorizedKeysCommand`, the local cache and the revocation list;
//! - [`canary`]: the audit canary that proves, from outside, that a host refuses what it should;
//! - [`ssh`]: `keyhole ssh`, the engineer's way in, which explains a refusal;
//! - [`settings`] and [`keys`]: shared by every side;
//! - [`cmd`]: the subcommands — parse, call, print.

#![deny(clippy::unwrap_used, clippy::expect_used)]

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod architecture;

pub mod bucket;
pub mod canary;
pub mod cmd;
pub mod diagnostic;
pub mod digest;
pub mod exit;
pub mod instance;
pub mod interned;
pub mod keys;
pub mod logging;
pub mod markdown;
pub mod memory;
pub mod metrics;
pub mod private_file;
pub mod publisher;
pub mod settings;
pub mod ssh;
