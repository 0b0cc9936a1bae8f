//! keyhole: decides who may SSH into which servers.
//!
//! The flow runs one way (see SPEC.md): [`policy`] + [`settings`] → [`directory`] (AD) →
//! [`homes`] (NFS) → [`keys`] → the pure [`resolve`] / [`render`] / [`plan`] steps → [`store`]
//! (S3). Each stage is a module; [`cmd`] wires them into subcommands.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod automation;
pub mod bucket_copy;
pub mod canary;
pub mod cmd;
pub mod diagnostic;
pub mod directory;
pub mod exit;
pub mod gather;
pub mod git;
pub mod group_file;
pub mod group_lookup;
pub mod group_seal;
pub mod head;
pub mod homes;
pub mod homes_state;
pub mod index;
pub mod instance;
pub mod interned;
pub mod keys;
pub mod lock;
pub mod logging;
pub mod markdown;
pub mod memory;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod policy_diff;
pub mod published;
pub mod render;
pub mod report;
pub mod resolve;
pub mod revocation;
pub mod settings;
pub mod signing;
pub mod ssh;
pub mod store;
pub mod trust;
