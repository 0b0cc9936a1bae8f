//! keyhole: decides who may SSH into which servers.
//!
//! The flow runs one way (see SPEC.md): [`policy`] + [`settings`] → [`directory`] (AD) →
//! [`homes`] (NFS) → [`keys`] → the pure [`resolve`] / [`render`] step → [`store`] (S3).
//! Each stage is a module; [`cmd`] wires them into subcommands.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod cmd;
pub mod diagnostic;
pub mod exit;
pub mod keys;
pub mod logging;
