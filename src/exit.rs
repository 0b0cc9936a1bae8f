//! The process exit codes of every keyhole command, in one place (SPEC.md "Exit codes").
//!
//! Commands return an [`Exit`] for outcomes they decide themselves (changes found, guard refused),
//! and errors for everything else; [`Exit::for_error`] maps an error to its code by looking for the
//! typed causes that have a code of their own, so no command has to remember the numbers.

use std::process::ExitCode;

/// Every code keyhole exits with. The numbers are a contract: scripts and monitoring rely on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success; for `--detailed-exitcode`: no changes.
    Success = 0,
    /// Runtime failure (directory, NFS, S3, git); nothing half-published.
    Failure = 1,
    /// `--detailed-exitcode` was given and there are changes.
    Changes = 2,
    /// The safety guard refused the publish; `--force` overrides.
    GuardRefused = 3,
    /// The command line was wrong.
    Usage = 64,
    /// Another publisher holds the lock, or committed an index concurrently.
    Busy = 75,
    /// The settings or the policy are invalid.
    Invalid = 78,
}

impl Exit {
    /// The code for an error that ended a command: the first cause in the chain that carries a
    /// code of its own decides, anything else is a runtime failure.
    pub fn for_error(error: &anyhow::Error) -> Exit {
        // anyhow's downcast looks through every layer of context, where `coded` puts the mark.
        error
            .downcast_ref::<Coded>()
            .map(|coded| coded.0)
            .or_else(|| error.downcast_ref::<Marked>().map(|marked| marked.exit))
            .unwrap_or(Exit::Failure)
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// Marks an error with the exit code it must end the process with, e.g.
/// `Err(anyhow::Error::new(Coded(Exit::Invalid)).context("..."))` or via [`coded`].
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(*.0))]
pub struct Coded(pub Exit);

fn describe(exit: Exit) -> &'static str {
    match exit {
        Exit::Success => "success",
        Exit::Failure => "runtime failure",
        Exit::Changes => "changes found",
        Exit::GuardRefused => "refused by the safety guard",
        Exit::Usage => "usage error",
        Exit::Busy => "another publisher is running",
        Exit::Invalid => "configuration or policy invalid",
    }
}

/// Wraps `error` so that the process exits with `exit` when it reaches `main`.
pub fn coded(exit: Exit, error: impl Into<anyhow::Error>) -> anyhow::Error {
    error.into().context(Coded(exit))
}

/// Marks `error` with its exit code without adding words to its message, for an error whose
/// first line already says what failed (the settings' "invalid settings in …: 2 errors"), so the
/// operator reads one prefix, not "…: configuration or policy invalid: …".
pub fn marked(exit: Exit, error: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(Marked {
        exit,
        error: error.into(),
    })
}

/// An error that reads exactly as the one it wraps and carries its exit code (see [`marked`]).
#[derive(Debug)]
struct Marked {
    exit: Exit,
    error: anyhow::Error,
}

impl std::fmt::Display for Marked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for Marked {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The wrapped error's own causes, so `{:#}` prints its chain exactly as it would alone.
        std::error::Error::source(&*self.error)
    }
}

/// The exit-code table shown at the end of every command's `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   success (with --detailed-exitcode: no changes)
  1   runtime failure (directory, NFS, S3, git); nothing half-published
  2   --detailed-exitcode and there are changes
  3   refused by the safety guard (--force overrides)
  64  usage error
  75  another publish holds the lock, or another publisher committed an index during this
      run (nothing of this run is served)
  78  configuration or policy invalid";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_without_a_code_is_a_runtime_failure() {
        assert_eq!(Exit::for_error(&anyhow::anyhow!("boom")), Exit::Failure);
    }

    #[test]
    fn a_coded_cause_anywhere_in_the_chain_decides() {
        let error = coded(Exit::Invalid, anyhow::anyhow!("bad key")).context("loading settings");
        assert_eq!(Exit::for_error(&error), Exit::Invalid);
        assert_eq!(
            format!("{error:#}"),
            "loading settings: configuration or policy invalid: bad key"
        );
    }

    #[test]
    fn a_marked_error_keeps_its_code_and_reads_as_itself() {
        let error = marked(Exit::Invalid, std::io::Error::other("2 errors")).context("outer");
        assert_eq!(Exit::for_error(&error), Exit::Invalid);
        assert_eq!(format!("{error:#}"), "outer: 2 errors");
    }
}
