//! What `canary probe` and `canary run` print, and the Prometheus textfile they write.
//!
//! JSON: `{"hosts": [{"host", "result", "detail", "seconds"}], "ok": bool}`; `canary run` adds,
//! per host, `granted_after` and `revoked_after` (seconds from the publish to the first probe
//! that saw the new key accepted / the old one refused) and a `latency` summary of the fleet
//! (median, p95, max).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::probe::{HostResult, Verdict};
use crate::markdown;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostReport {
    #[serde(flatten)]
    pub probe: HostResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granted_after: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_after: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub median: f64,
    pub p95: f64,
    pub max: f64,
    pub hosts: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub grant: Option<Stats>,
    pub revocation: Option<Stats>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub hosts: Vec<HostReport>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
}

impl Report {
    pub fn of_probe(results: Vec<HostResult>) -> Report {
        let ok = results.iter().all(|host| host.result == Verdict::Ok);
        Report {
            hosts: results
                .into_iter()
                .map(|probe| HostReport {
                    probe,
                    granted_after: None,
                    revoked_after: None,
                })
                .collect(),
            ok,
            latency: None,
        }
    }

    /// Hosts per verdict, every verdict listed.
    pub fn counts(&self) -> BTreeMap<Verdict, usize> {
        let mut counts: BTreeMap<Verdict, usize> =
            Verdict::ALL.iter().map(|verdict| (*verdict, 0)).collect();
        for host in &self.hosts {
            *counts.entry(host.probe.result).or_default() += 1;
        }
        counts
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let width = self
            .hosts
            .iter()
            .map(|h| h.probe.host.len())
            .max()
            .unwrap_or(0);
        for host in &self.hosts {
            let _ = write!(
                out,
                "{:width$}  {:17}  {:6.2}s",
                host.probe.host,
                host.probe.result.name(),
                host.probe.seconds
            );
            if let Some(granted) = host.granted_after {
                let _ = write!(out, "  granted after {granted:.1}s");
            }
            if let Some(revoked) = host.revoked_after {
                let _ = write!(out, "  revoked after {revoked:.1}s");
            }
            let _ = writeln!(out, "  {}", host.probe.detail);
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// The report for a pull-request comment or a CI summary. Host names come from the inventory
    /// or from EC2, details from what a host's sshd or ssh printed: text that whoever runs a host
    /// (or tags an instance) controls, so each goes through [`crate::markdown`] and can neither
    /// split the table nor become a link, an image or a mention.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "**{}**\n\n| host | result | detail |\n|---|---|---|\n",
            self.summary()
        );
        for host in &self.hosts {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                markdown::code(&host.probe.host),
                host.probe.result.name(),
                markdown::prose(&host.probe.detail)
            );
        }
        out
    }

    fn summary(&self) -> String {
        let counts: Vec<String> = self
            .counts()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(verdict, n)| format!("{n} {}", verdict.name()))
            .collect();
        let mut summary = format!(
            "canary: {} host(s): {}",
            self.hosts.len(),
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts.join(", ")
            }
        );
        if let Some(latency) = &self.latency {
            for (what, stats) in [
                ("grant", &latency.grant),
                ("revocation", &latency.revocation),
            ] {
                if let Some(stats) = stats {
                    let _ = write!(
                        summary,
                        "; {what} latency median {:.1}s, p95 {:.1}s, max {:.1}s",
                        stats.median, stats.p95, stats.max
                    );
                }
            }
        }
        summary
    }

    /// The Prometheus textfile: hosts per result, and the latencies of a run.
    pub fn write_metrics(&self, path: &Path, now_seconds: u64) -> anyhow::Result<()> {
        let mut text = String::from(
            "# HELP keyhole_canary_hosts Hosts per canary probe result.\n# TYPE keyhole_canary_hosts gauge\n",
        );
        for (verdict, n) in self.counts() {
            let _ = writeln!(
                text,
                "keyhole_canary_hosts{{result=\"{}\"}} {n}",
                verdict.name()
            );
        }
        let _ = writeln!(
            text,
            "# HELP keyhole_canary_ok 1 when every host was ok.\n# TYPE keyhole_canary_ok gauge\nkeyhole_canary_ok {}",
            u8::from(self.ok)
        );
        let _ = writeln!(
            text,
            "# TYPE keyhole_canary_last_run_timestamp_seconds gauge\nkeyhole_canary_last_run_timestamp_seconds {now_seconds}"
        );
        if let Some(latency) = &self.latency {
            for (what, stats) in [
                ("grant", &latency.grant),
                ("revocation", &latency.revocation),
            ] {
                if let Some(stats) = stats {
                    let _ = writeln!(text, "# TYPE keyhole_canary_{what}_seconds gauge");
                    for (quantile, value) in
                        [("0.5", stats.median), ("0.95", stats.p95), ("1", stats.max)]
                    {
                        let _ = writeln!(
                            text,
                            "keyhole_canary_{what}_seconds{{quantile=\"{quantile}\"}} {value:.3}"
                        );
                    }
                }
            }
        }
        crate::metrics::write_atomically(path, &text)
    }
}

/// Median, p95 and max of `values` (nearest rank), `None` when empty.
pub fn stats(values: &[f64]) -> Option<Stats> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    };
    Some(Stats {
        median: rank(0.5),
        p95: rank(0.95),
        max: sorted[sorted.len() - 1],
        hosts: sorted.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, result: Verdict) -> HostResult {
        HostResult {
            host: name.into(),
            result,
            detail: "d".into(),
            seconds: 0.25,
            granted: true,
            revoked: true,
        }
    }

    #[test]
    fn the_json_shape_is_the_contract() {
        let report = Report::of_probe(vec![
            host("web-1", Verdict::Ok),
            host("db-1", Verdict::NotRevoked),
        ]);
        assert!(!report.ok);
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "hosts": [
                    {"host": "web-1", "result": "ok", "detail": "d", "seconds": 0.25},
                    {"host": "db-1", "result": "not_revoked", "detail": "d", "seconds": 0.25}
                ],
                "ok": false
            })
        );
        assert_eq!(report.counts()[&Verdict::NotRevoked], 1);
        assert!(
            report
                .text()
                .contains("canary: 2 host(s): 1 ok, 1 not_revoked")
        );
    }

    /// The cell borders of a table row: its pipes that Markdown does not read as text (GFM splits
    /// a row at every unescaped `|`, inside a code span too).
    fn cell_borders(row: &str) -> usize {
        row.matches('|').count() - row.matches("\\|").count()
    }

    #[test]
    fn a_pipe_in_a_host_name_does_not_split_its_row() {
        let report = Report::of_probe(vec![
            host("web|1.internal", Verdict::Ok),
            host("db`|`1", Verdict::NotRevoked),
        ])
        .markdown();
        let rows: Vec<&str> = report.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(rows.len(), 4, "{report}");
        for row in rows {
            assert_eq!(cell_borders(row), 4, "{row:?} in:\n{report}");
        }
        assert!(report.contains("| `web\\|1.internal` | ok |"), "{report}");
    }

    #[test]
    fn a_detail_or_host_cannot_mention_link_or_embed() {
        let mut hostile = host("ops@web-1", Verdict::NotGranted);
        hostile.detail =
            "Permission denied; cc @corp/security-team, see [docs](https://evil.example/x) \
                          ![pixel](https://evil.example/p.png) <img src=x onerror=alert(1)> \
                          www.evil.example\n# heading"
                .into();
        let report = Report::of_probe(vec![hostile]).markdown();
        // GitHub finds mentions in the rendered text, where a backslash before `@` is gone.
        assert!(!report.contains("@corp"), "a mention passes:\n{report}");
        let live = crate::markdown::live_text(&report);
        for construct in ["](", "![", "<img", "https://", "www.", "#"] {
            assert!(
                !live.contains(construct),
                "{construct:?} is live in:\n{report}"
            );
        }
        assert_eq!(
            report.lines().count(),
            5,
            "the detail stays on its row:\n{report}"
        );
        assert!(
            report.contains("| `ops@web-1` | not_granted | Permission denied"),
            "{report}"
        );
    }

    #[test]
    fn stats_are_nearest_rank() {
        let s = stats(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.p95, s.max, s.hosts), (2.0, 10.0, 10.0, 4));
        assert_eq!(stats(&[]), None);
    }
}
