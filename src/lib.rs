//! keyhole: decides who may SSH into which servers.
//!
//! The flow runs one way (see SPEC.md): [`policy`] + [`settings`] → [`directory`] (AD) →
//! [`homes`] (NFS) → [`keys`] → the pure [`resolve`] / [`render`] / [`plan`] steps → [`store`]
//! (S3). Each stage is a module; [`cmd`] wires them into subcommands.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod cmd;
pub mod diagnostic;
pub mod directory;
pub mod exit;
pub mod homes;
pub mod logging;
pub mod policy;
pub mod resolve;
pub mod settings;
