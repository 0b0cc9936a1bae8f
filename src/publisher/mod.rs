//! The publisher: policy + Active Directory + NFS homes → the signed objects in the bucket.
//!
//! The stages, in pipeline order: [`policy`] (what the version-controlled file asks for, its
//! commit read with [`git`]; [`automation`] its automation accounts) → [`directory`] (who is in
//! AD, enabled and unexpired; incremental by `uSNChanged`) → [`resolve`] (access group → people)
//! → [`homes`] (their `authorized_keys`; [`homes_state`] remembers what did not change; [`reader_pool`] bounds
//! the reads and abandons a hung one) →
//! [`render`] (one file per group; [`render_memo`] remembers what an unchanged
//! input rendered to) → [`plan`] (what changes against what is published) →
//! [`publish`] (the commit protocol). [`gather`] runs the reading stages and [`prepare`] adds the
//! bucket's side, the shared first half of `plan` and `publish`. [`lock`] and [`revocation`] keep a
//! publisher honest across runs; [`seal`] signs each group for its logins; [`report`] and
//! [`policy::diff`] are what it prints.
//! Nothing here is imported by `instance/` or `canary/`: they read the bucket through
//! [`crate::bucket`] only.

pub mod automation;
pub mod directory;
pub mod gather;
pub mod git;
pub mod homes;
pub mod homes_state;
pub mod lock;
pub mod plan;
pub mod policy;
pub mod prepare;
pub mod publish;
pub mod reader_pool;
pub mod render;
pub mod render_memo;
pub mod report;
pub mod resolve;
pub mod revocation;
pub mod seal;
