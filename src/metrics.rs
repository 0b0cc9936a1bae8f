//! The publisher's Prometheus textfile (`publish --metrics-file`), for node_exporter's textfile
//! collector: what the last run did and when a run last succeeded.
//!
//! The file is replaced atomically (temporary file + rename), so the collector never reads half
//! a file. A failed run keeps the previous `last_success` timestamp, which is what an alert on
//! "no successful publish for 30 minutes" needs.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::exit::Exit;

const LAST_SUCCESS: &str = "keyhole_publish_last_success_timestamp_seconds";

/// What one publish run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunMetrics {
    pub exit_code: u8,
    pub duration: Duration,
    pub finished_at: Option<SystemTime>,
    pub users: usize,
    pub keys: usize,
    pub groups_changed: usize,
    pub problems: usize,
    pub guard_refused: bool,
    pub ldap_searches: usize,
    pub s3_writes: usize,
    /// The run ended because AD refused the bind (or the bind guard kept a refused password
    /// from being tried again).
    pub ldap_bind_refused: bool,
    /// Bytes of the object bodies read from and written to S3 (see `store::RequestCounts`).
    pub s3_bytes_read: usize,
    pub s3_bytes_written: usize,
}

impl RunMetrics {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Exit::Success as u8
    }
}

/// The textfile for `run`; `previous_success` is carried over when this run failed.
pub fn render(run: &RunMetrics, previous_success: Option<f64>) -> String {
    let finished = run
        .finished_at
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64());
    let last_success = if run.succeeded() {
        finished
    } else {
        previous_success
    };
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    };
    if let Some(last) = last_success {
        gauge(
            LAST_SUCCESS,
            "Unix time of the last publish that exited 0.",
            last,
        );
    }
    gauge(
        "keyhole_publish_last_run_timestamp_seconds",
        "Unix time the last publish ended.",
        finished.unwrap_or(0.0),
    );
    gauge(
        "keyhole_publish_exit_code",
        "Exit code of the last publish (see README).",
        f64::from(run.exit_code),
    );
    gauge(
        "keyhole_publish_duration_seconds",
        "Duration of the last publish.",
        run.duration.as_secs_f64(),
    );
    gauge(
        "keyhole_publish_users",
        "People with keys in at least one published access group.",
        run.users as f64,
    );
    gauge(
        "keyhole_publish_keys",
        "Distinct keys published.",
        run.keys as f64,
    );
    gauge(
        "keyhole_publish_groups_changed",
        "Access groups created, updated or deleted by the last publish.",
        run.groups_changed as f64,
    );
    gauge(
        "keyhole_publish_problems",
        "Harvest and key problems found by the last publish.",
        run.problems as f64,
    );
    gauge(
        "keyhole_publish_guard_refused",
        "1 if the safety guard refused the last publish.",
        f64::from(u8::from(run.guard_refused)),
    );
    gauge(
        "keyhole_publish_ldap_searches",
        "LDAP search requests made by the last publish.",
        run.ldap_searches as f64,
    );
    gauge(
        "keyhole_publish_s3_writes",
        "S3 PUT and DELETE requests made by the last publish.",
        run.s3_writes as f64,
    );
    gauge(
        "keyhole_publish_ldap_bind_refused",
        "1 if the last publish stopped at a bind refused with invalid credentials (now or before, with the same password).",
        f64::from(u8::from(run.ldap_bind_refused)),
    );
    gauge(
        "keyhole_publish_s3_read_bytes",
        "Bytes of S3 object bodies read by the last publish.",
        run.s3_bytes_read as f64,
    );
    gauge(
        "keyhole_publish_s3_written_bytes",
        "Bytes of S3 object bodies written by the last publish.",
        run.s3_bytes_written as f64,
    );
    out
}

/// Writes the textfile at `path` atomically, keeping the previous last-success time on failure.
pub fn write(path: &Path, run: &RunMetrics) -> anyhow::Result<()> {
    let previous = std::fs::read_to_string(path).ok().and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix(LAST_SUCCESS)?.trim().parse().ok())
    });
    write_atomically(path, &render(run, previous))
}

/// Replaces the textfile at `path` with `text` (a temporary file in the same directory, then a
/// rename), so the node exporter never reads half a file.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let directory = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(directory)
        .with_context(|| format!("writing metrics in {}", directory.display()))?;
    file.write_all(text.as_bytes())?;
    file.persist(path)
        .with_context(|| format!("replacing the metrics file {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(exit_code: u8) -> RunMetrics {
        RunMetrics {
            exit_code,
            duration: Duration::from_millis(1500),
            finished_at: Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            users: 12,
            keys: 20,
            groups_changed: 2,
            problems: 1,
            guard_refused: exit_code == 3,
            ldap_searches: 3,
            s3_writes: 3,
            ldap_bind_refused: false,
            s3_bytes_read: 4096,
            s3_bytes_written: 512,
        }
    }

    #[test]
    fn a_success_records_its_time_and_a_failure_keeps_the_last_success() {
        let text = render(&run(0), Some(1.0));
        assert!(
            text.contains("\nkeyhole_publish_last_success_timestamp_seconds 1800000000\n"),
            "{text}"
        );
        assert!(text.contains("\nkeyhole_publish_duration_seconds 1.5\n"));
        assert!(text.contains("\nkeyhole_publish_users 12\n"));
        assert!(text.contains("\nkeyhole_publish_s3_read_bytes 4096\n"));
        assert!(text.contains("\nkeyhole_publish_s3_written_bytes 512\n"));
        let refused = render(&run(3), Some(1_799_999_000.0));
        assert!(
            refused.contains("\nkeyhole_publish_last_success_timestamp_seconds 1799999000\n"),
            "{refused}"
        );
        assert!(refused.contains("\nkeyhole_publish_guard_refused 1\n"));
        assert!(refused.contains("\nkeyhole_publish_exit_code 3\n"));
        assert!(!render(&run(1), None).contains(LAST_SUCCESS));
    }

    #[test]
    fn the_file_is_replaced_and_the_last_success_survives_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyhole.prom");
        write(&path, &run(0)).unwrap();
        let mut failed = run(1);
        failed.finished_at = Some(UNIX_EPOCH + Duration::from_secs(1_800_000_300));
        write(&path, &failed).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\nkeyhole_publish_last_success_timestamp_seconds 1800000000\n"),
            "{text}"
        );
        assert!(text.contains("\nkeyhole_publish_last_run_timestamp_seconds 1800000300\n"));
    }
}
