//! `KEYHOLE_<SECTION>_<KEY>` environment variables, laid over what the file says.
//!
//! A variable inside one of keyhole's sections that names no setting is an error (a typo would
//! otherwise be silently ignored in production); other `KEYHOLE_*` variables (a deployment's own,
//! a script's) are none of keyhole's business. A value is turned into the shape its key has in
//! [`super::schema::KEYS`], so the rest of loading does not know where it came from.

use std::path::PathBuf;

use crate::diagnostic::{Diagnostic, Severity};

use super::schema::{Document, KEYS, Kind};
use super::{CONFIG_ENV, PASSWORD_ENV};

/// Environment variables that start with `KEYHOLE_` but are not settings overrides.
const NOT_OVERRIDES: &[&str] = &[CONFIG_ENV, PASSWORD_ENV, "KEYHOLE_LOG"];

/// A problem with the variable `name` (which has no line or column).
pub(super) fn diagnostic(name: &str, message: String) -> Diagnostic {
    diagnostic_with(Severity::Error, name, message)
}

pub(super) fn diagnostic_with(severity: Severity, name: &str, message: String) -> Diagnostic {
    Diagnostic {
        severity,
        file: PathBuf::from(format!("environment variable {name}")),
        line: 0,
        column: 0,
        message,
    }
}

/// The variable name that overrides `section.key`.
pub(super) fn name(section: &str, key: &str) -> String {
    if section.is_empty() {
        format!("KEYHOLE_{}", key.to_uppercase())
    } else {
        format!("KEYHOLE_{}_{}", section.to_uppercase(), key.to_uppercase())
    }
}

/// Lays one variable over the document. Variables that are not keyhole's are left alone.
pub(super) fn overlay(document: &mut Document, variable: &str, value: &str) -> Result<(), String> {
    if !variable.starts_with("KEYHOLE_") || NOT_OVERRIDES.contains(&variable) {
        return Ok(());
    }
    let Some(&(section, key, kind)) = KEYS.iter().find(|(s, k, _)| name(s, k) == variable) else {
        let in_a_section = KEYS
            .iter()
            .any(|(s, _, _)| !s.is_empty() && variable.starts_with(&name(s, "")));
        if !in_a_section {
            tracing::debug!(
                variable,
                "ignoring a KEYHOLE_ variable that names no setting"
            );
            return Ok(());
        }
        let known: Vec<String> = KEYS.iter().map(|(s, k, _)| name(s, k)).collect();
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        let hint = crate::diagnostic::did_you_mean(variable, &known)
            .map(|near| format!("; did you mean {near}?"))
            .unwrap_or_default();
        return Err(format!("not a keyhole setting{hint}"));
    };
    let value = typed(kind, value)?;
    document.set_from_environment(section, key, variable, value);
    Ok(())
}

/// The TOML value an environment string stands for, by the shape of its key.
fn typed(kind: Kind, value: &str) -> Result<toml::Value, String> {
    let parsed = match kind {
        Kind::Text | Kind::Duration => return Ok(toml::Value::String(value.to_owned())),
        Kind::Integer => value.trim().parse().map(toml::Value::Integer).ok(),
        Kind::Float => value.trim().parse().map(toml::Value::Float).ok(),
        Kind::Bool => value.trim().parse().map(toml::Value::Boolean).ok(),
        // A comma-separated list; empty items are dropped so `a,b,` works.
        Kind::List | Kind::TextOrList => Some(toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_owned()))
                .collect(),
        )),
        Kind::Map => {
            return Err(
                "a table cannot come from the environment: write it in the settings file".into(),
            );
        }
    };
    parsed.ok_or_else(|| format!("{value:?} is not {}", kind.expected()))
}
