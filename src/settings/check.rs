//! Phase two's bookkeeping: the [`Checker`] every section's `validate` reports through, and
//! [`Invalid`], the one error a command sees when the settings have problems.
//!
//! A problem is pinned to the key it is about: its place in the file, or the environment
//! variable that set it. Nothing here decides what is wrong; the sections do.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diagnostic::{Diagnostic, Severity, Source};

use super::environment;
use super::schema::Document;

/// The settings have at least one error. Holds every problem, errors and warnings, in the order
/// of the file's lines (those of environment variables last).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    pub path: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid settings in {}: {}",
            self.path.display(),
            counts(&self.diagnostics)
        )?;
        for diagnostic in &self.diagnostics {
            write!(f, "\n{diagnostic}")?;
        }
        Ok(())
    }
}

/// "2 errors, 1 warning", "1 error".
fn counts(diagnostics: &[Diagnostic]) -> String {
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diagnostics.len() - errors;
    let tally = |count: usize, noun: &str| {
        if count == 1 {
            format!("1 {noun}")
        } else {
            format!("{count} {noun}s")
        }
    };
    if warnings == 0 {
        tally(errors, "error")
    } else {
        format!("{}, {}", tally(errors, "error"), tally(warnings, "warning"))
    }
}

/// The file's problems by line and column, then those of environment variables (which have no
/// line). Stable: problems at the same spot keep the order they were found in.
pub(super) fn sorted(mut diagnostics: Vec<Diagnostic>) -> Vec<Diagnostic> {
    diagnostics.sort_by_key(|d| (d.line == 0, d.line, d.column));
    diagnostics
}

/// Collects problems for one file, pointing each at the key it is about.
pub(super) struct Checker<'a, 'd> {
    source: &'a Source<'a>,
    document: &'a Document,
    diagnostics: &'d mut Vec<Diagnostic>,
    base: &'a Path,
}

impl<'a, 'd> Checker<'a, 'd> {
    pub(super) fn new(
        source: &'a Source<'a>,
        document: &'a Document,
        base: &'a Path,
        diagnostics: &'d mut Vec<Diagnostic>,
    ) -> Self {
        Checker {
            source,
            document,
            diagnostics,
            base,
        }
    }

    pub(super) fn error(&mut self, section: &str, key: &str, message: impl fmt::Display) {
        self.report(Severity::Error, section, key, message);
    }

    /// A key that does nothing where it is (e.g. a Kerberos key with a simple bind): said, not
    /// fatal, so one example file can document both methods.
    pub(super) fn warning(&mut self, section: &str, key: &str, message: impl fmt::Display) {
        self.report(Severity::Warning, section, key, message);
    }

    fn report(&mut self, severity: Severity, section: &str, key: &str, message: impl fmt::Display) {
        // The value had the wrong shape and was reported as such; whatever follows from its
        // absence ("is required") would only repeat that problem in other words.
        if self.document.is_broken(section, key) {
            return;
        }
        let name = if section.is_empty() {
            key.to_owned()
        } else {
            format!("{section}.{key}")
        };
        let message = format!("{name}: {message}");
        let diagnostic = match self.document.variable(section, key) {
            // Set by the environment: the file's line would point at a value that is not used.
            Some(variable) => environment::diagnostic_with(severity, variable, message),
            None => {
                // A missing key is pointed at its section's header: where it must be added.
                let span = self
                    .document
                    .key_span(section, key)
                    .or_else(|| self.document.section_span(section))
                    .unwrap_or(0..0);
                self.source.diagnostic(severity, span, message)
            }
        };
        self.diagnostics.push(diagnostic);
    }

    pub(super) fn required<T>(&mut self, section: &str, key: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            let under = if section.is_empty() {
                "at the top of the file".to_owned()
            } else {
                format!("under [{section}]")
            };
            self.error(section, key, format!("is required: add {key} = … {under}"));
        }
        value
    }

    pub(super) fn path(&self, value: &str) -> PathBuf {
        self.base.join(value)
    }

    pub(super) fn duration(
        &mut self,
        section: &str,
        key: &str,
        value: Option<&str>,
        default: &str,
    ) -> Duration {
        let text = value.unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(duration) if !duration.is_zero() => duration,
            Ok(_) => {
                self.error(section, key, "must be longer than zero");
                Duration::from_secs(1)
            }
            Err(error) => {
                let why = match error {
                    humantime::DurationError::UnknownUnit { unit, .. } => {
                        format!(" ({unit:?} is not a unit)")
                    }
                    humantime::DurationError::NumberOverflow => " (the number is too large)".into(),
                    _ => String::new(),
                };
                self.error(
                    section,
                    key,
                    format!(
                        "{text:?} is not a duration{why}: write a number and a unit, like \"30s\", \"5m\", \"2h\" or \"7d\""
                    ),
                );
                Duration::from_secs(1)
            }
        }
    }

    pub(super) fn positive(
        &mut self,
        section: &str,
        key: &str,
        value: Option<i64>,
        default: i64,
    ) -> u32 {
        let value = value.unwrap_or(default);
        if value <= 0 {
            self.error(
                section,
                key,
                format!("must be a positive number, not {value}"),
            );
            return 1;
        }
        u32::try_from(value).unwrap_or_else(|_| {
            self.error(
                section,
                key,
                format!("{value} is too large (at most {})", u32::MAX),
            );
            1
        })
    }

    pub(super) fn non_empty(
        &mut self,
        section: &str,
        key: &str,
        value: Option<String>,
    ) -> Option<String> {
        match value {
            Some(text) if text.trim().is_empty() => {
                self.error(
                    section,
                    key,
                    "must not be empty: give a value or remove the line",
                );
                None
            }
            other => other,
        }
    }
}

pub(super) fn check_non_empty(value: Option<String>) -> Option<String> {
    value.filter(|text| !text.trim().is_empty())
}
