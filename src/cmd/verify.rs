//! `keyhole verify`: read the bucket, judge it ([`crate::bucket::verify`]), print the report.
//! It only lists and reads, so it runs with the instance's read-only credentials (plus
//! `s3:ListBucket`).

use std::time::SystemTime;

use super::{Format, GlobalArgs};
use crate::bucket::deployment::Deployment;
use crate::bucket::index::Index;
use crate::bucket::store::Timeouts;
use crate::bucket::verify::{Report, judge, judge_trust, observe};
use crate::exit::{EXIT_CODES_HELP, Exit};

/// Check that the bucket matches the published index and its signature (drift, tampering).
///
/// Lists every object under the prefix, reads index.json, every access group's file and the
/// owners object it names, and reports every finding, not just the first:
///
///   index_missing       no index.json (then nothing else can be checked)
///   index_invalid       index.json is not an index this keyhole reads
///   missing             an object the index names (a group's file, the owners object) is not
///                       in the bucket
///   modified            an object whose SHA-256 is not the one the index records
///   owners_mismatch     the owners object names another person for a key than the group file
///                       it is published in
///   extra               any other object under the prefix (superseded group and owners
///                       objects, kept one generation for instances mid-refresh, are not extra)
///
/// With a signature key (instance.verify_key, else the public half of [signing] key_file: the
/// KEY_FILE.pub beside it, or derived from the private key), also:
///
///   index_signature_missing   index.json carries no signature
///   index_signature_invalid   index.json's signature does not verify with that key
///   expired             the index's not_after has passed (instances refuse it)
///   not_after_invalid   a signed index without a readable not_after
///
/// And, always, the trust an instance applies to the index:
///
///   index_untrusted     another deployment's index (a signed one must name this deployment),
///                       the legacy format 1 where this host trusted format 2, a not_after more
///                       than 30 days ahead, or an index older than (or of the same generation
///                       as, but other than) the one this host trusted last: the publisher's
///                       head beside safety.lock_file, else an instance's cached index
///
/// Exits 1 when there is any finding, 0 when the bucket is clean. When S3 cannot be read it also
/// exits 1, with the error on stderr and no report. A verify that overlaps a publish may see its
/// writes half done: alert on findings that persist.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP, verbatim_doc_comment)]
pub struct Args {
    /// text: one line per finding; json: {"bucket", "prefix", "generation", "signature_checked",
    /// "findings": [{"kind", "key", "detail"}], "ok"}; markdown: a table.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub async fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<Exit> {
    let settings = global.settings()?;
    let s3 = settings.s3()?;
    let verifier = crate::bucket::published::verifier(&settings)?;
    let deployment = Deployment::connect(s3, Timeouts::PUBLISHER).await;
    let layout = &deployment.layout;
    let observed = observe(&deployment.store, layout).await?;
    let now = SystemTime::now();
    let mut findings = judge(layout, &observed, verifier.as_ref(), now);
    let seen = crate::instance::fetch::local_seen(&settings)?;
    findings.extend(judge_trust(
        layout,
        &observed,
        &deployment.name,
        verifier.as_ref(),
        seen.as_ref(),
        now,
    ));
    let report = Report {
        bucket: s3.bucket.clone(),
        prefix: s3.prefix.clone(),
        generation: observed
            .index
            .as_deref()
            .and_then(|bytes| Index::open(bytes, None).ok())
            .map(|index| index.generation),
        signature_checked: verifier.is_some(),
        ok: findings.is_empty(),
        findings,
    };
    print!("{}", format_report(&report, args.format));
    if report.ok {
        tracing::info!(
            generation = report.generation,
            "the bucket matches the index"
        );
        Ok(Exit::Success)
    } else {
        tracing::error!(
            findings = report.findings.len(),
            "the bucket does not match the index"
        );
        Ok(Exit::Failure)
    }
}

fn format_report(report: &Report, format: Format) -> String {
    match format {
        Format::Json => crate::bucket::verify::json(report),
        Format::Text => crate::bucket::verify::text(report),
        Format::Markdown => crate::bucket::verify::markdown(report),
    }
}
