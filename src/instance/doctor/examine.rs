//! What `keyhole doctor` gathers on an instance: everything sshd and the refresh timer depend on,
//! judged by the rules in [`crate::instance::doctor`].
//!
//! It reads the effective sshd config with `sshd -T` (as sshd itself would apply it, for the
//! login user), the systemd units that start sshd, the files keyhole needs, and S3: the index is
//! fetched and verified into a throwaway cache, never the real one, so doctor changes nothing a
//! login reads. Run it as root (sshd -T needs the host keys).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::instance::doctor::{self, Access, Finding, Report};
use crate::instance::{Cache, host_groups};
use crate::settings::Settings;

/// How long doctor waits for S3 (it is run by a person at a terminal, not at a login).
const S3_TIMEOUT: Duration = Duration::from_secs(15);

const SYSTEMD_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// What `keyhole doctor` was asked to check.
#[derive(Debug, Clone)]
pub struct Request {
    /// `--config`: the settings file (`None`: the default locations).
    pub config: Option<PathBuf>,
    /// `--sshd-config`: check this file instead of the one sshd uses.
    pub sshd_config: Option<PathBuf>,
    /// The sshd binary asked for its effective config.
    pub sshd: PathBuf,
    /// Where sshd's systemd units and drop-ins are looked for (empty: the system's directories).
    pub systemd_dirs: Vec<PathBuf>,
}

/// Every check, in order; the report holds a finding for each.
pub fn examine(args: &Request) -> Report {
    let mut findings = Vec::new();
    let settings_path = crate::settings::locate(args.config.as_deref());
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(settings) => {
            findings.push(Finding::ok(
                "settings",
                format!("{} is valid", settings_path.display()),
            ));
            Some(settings)
        }
        Err(error) => {
            findings.push(Finding::fail(
                "settings",
                format!("{error:#}"),
                "fix the settings file (see keyhole.example.toml)",
            ));
            None
        }
    };
    let instance = settings.as_ref().and_then(|s| s.instance().ok());
    if settings.is_some() && instance.is_none() {
        findings.push(Finding::fail(
            "settings",
            format!("{} has no [instance] section", settings_path.display()),
            "add [instance] with login_user, the access groups and verify_key",
        ));
    }

    // sshd, as it applies to the login user.
    let login_user = instance.map_or("root", |i| i.login_user.as_str());
    let config_file = args
        .sshd_config
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/ssh/sshd_config"));
    let mut command_user = None;
    match effective_sshd_config(&args.sshd, args.sshd_config.as_deref(), login_user) {
        Ok(config) => {
            findings.push(Finding::ok(
                "sshd_config",
                format!("`sshd -T` read {}", config_file.display()),
            ));
            let (sshd, command, user) = doctor::sshd_findings(&config, &config_file);
            findings.extend(sshd);
            findings.push(revoked_keys_finding(&config, instance));
            command_user = user.and_then(|name| doctor::account(&name));
            if let Some(program) = command
                .as_deref()
                .filter(|c| doctor::is_keyhole(c))
                .and_then(|c| doctor::command_words(c).into_iter().next())
            {
                findings.push(match doctor::sshd_safe_path(Path::new(&program)) {
                    Ok(()) => Finding::ok(
                        "command_path",
                        format!("{program} and every directory above it are root's and writable by no one else"),
                    ),
                    Err(problem) => Finding::fail(
                        "command_path",
                        format!("sshd refuses to run {program}: {problem}"),
                        "install keyhole as /usr/bin/keyhole (root:root, 0755), as the package does; no directory above it may be writable by anyone but root",
                    ),
                });
            }
        }
        Err(problem) => findings.push(Finding::fail(
            "sshd_config",
            problem,
            "run doctor as root on a host with OpenSSH (sshd -T needs the host keys), or point --sshd-config at the file to check",
        )),
    }

    let dirs: Vec<PathBuf> = if args.systemd_dirs.is_empty() {
        SYSTEMD_DIRS.iter().map(PathBuf::from).collect()
    } else {
        args.systemd_dirs.clone()
    };
    let overrides = doctor::systemd_overrides(&dirs);
    findings.push(match overrides.first() {
        None => Finding::ok(
            "systemd_override",
            "no systemd unit passes sshd its own AuthorizedKeysCommand with -o",
        ),
        Some((file, line)) => Finding::fail(
            "systemd_override",
            format!(
                "{} starts sshd with its own AuthorizedKeysCommand ({line}): a -o flag beats every config file, so keyhole is never asked",
                file.display()
            ),
            format!(
                "remove that drop-in (EC2 Instance Connect: uninstall ec2-instance-connect, or override ExecStart in /etc/systemd/system/sshd.service.d/), then `systemctl daemon-reload && systemctl restart sshd`{}",
                if overrides.len() > 1 {
                    format!(" ({} such lines in all)", overrides.len())
                } else {
                    String::new()
                }
            ),
        ),
    });

    if let (Some(settings), Some(instance)) = (settings.as_ref(), instance) {
        findings.extend(instance_findings(
            settings,
            instance,
            &settings_path,
            command_user.as_ref(),
        ));
    }

    Report::new(findings)
}

/// `sshd -T` for the login user (so `Match User` blocks apply), with `-f` when given.
fn effective_sshd_config(
    sshd: &Path,
    config: Option<&Path>,
    login_user: &str,
) -> Result<Vec<(String, String)>, String> {
    let mut command = Command::new(sshd);
    command
        .arg("-T")
        .arg("-C")
        .arg(format!("user={login_user},host=localhost,addr=127.0.0.1"));
    if let Some(config) = config {
        command.arg("-f").arg(config);
    }
    let output = command
        .output()
        .map_err(|error| format!("cannot run {} -T: {error}", sshd.display()))?;
    if !output.status.success() {
        return Err(format!(
            "`{} -T` failed: {}",
            sshd.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(doctor::parse_sshd_t(&String::from_utf8_lossy(
        &output.stdout,
    )))
}

fn instance_findings(
    settings: &Settings,
    instance: &crate::settings::InstanceSettings,
    settings_path: &Path,
    command_user: Option<&doctor::Account>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Some(user) = command_user {
        findings.push(match doctor::may_access(user, settings_path, Access::Read) {
            Ok(()) => Finding::ok(
                "settings_readable",
                format!("{} can read {}", user.name, settings_path.display()),
            ),
            Err(problem) => Finding::fail(
                "settings_readable",
                problem,
                format!(
                    "chgrp {} {path} && chmod 0640 {path}, and make every directory above it searchable",
                    user.name,
                    path = settings_path.display()
                ),
            ),
        });
        findings.push(
            match doctor::may_access(user, &instance.cache_dir, Access::WriteDir) {
                Ok(()) => Finding::ok(
                    "cache_writable",
                    format!(
                        "{} can write in {}",
                        user.name,
                        instance.cache_dir.display()
                    ),
                ),
                Err(problem) => Finding::fail(
                    "cache_writable",
                    problem,
                    format!(
                        "install -d -o {} -g {0} -m 0750 {}",
                        user.name,
                        instance.cache_dir.display()
                    ),
                ),
            },
        );
    }

    findings.push(match doctor::account(&instance.login_user) {
        Some(account) => Finding::ok(
            "login_user",
            format!("{} exists (uid {})", account.name, account.uid),
        ),
        None => Finding::fail(
            "login_user",
            format!("the login user {} does not exist on this host", instance.login_user),
            "set [instance] login_user to the shared login account of this image (e.g. ec2-user, ubuntu, admin)",
        ),
    });

    let cache = Cache::new(&instance.cache_dir);
    let mut groups = host_groups::current(&cache, instance).unwrap_or_default();
    match &instance.imds {
        None => findings.push(Finding::ok(
            "access_groups",
            format!("[instance] access_groups: {}", groups.join(", ")),
        )),
        Some(source) => {
            let (finding, live) = ec2_groups(&cache, source, &groups);
            findings.push(finding);
            // What the next refresh will serve is what the index must have.
            if let Some(live) = live {
                groups = instance.access_groups.clone();
                for group in live {
                    if !groups.contains(&group) {
                        groups.push(group);
                    }
                }
            }
        }
    }

    // S3 and the index, into a throwaway cache: the real one is only the timer's to change.
    let index = match throwaway_refresh(settings, &cache) {
        Ok(index) => {
            let signed = if instance.verify_key.is_some() {
                "its signature verifies with verify_key"
            } else {
                "verify_key is not set, so its signature is not checked"
            };
            findings.push(Finding::ok(
                "index",
                format!(
                    "index generation {} read from S3; {signed}; this host's group files match it",
                    index.generation
                ),
            ));
            Some(index)
        }
        Err(error) => {
            findings.push(Finding::fail(
                "index",
                format!("{error:#}"),
                "check [s3] and the instance role's s3:GetObject on the prefix, that the publisher is running (an expired index) and that verify_key is the publisher's signing public key",
            ));
            None
        }
    };
    if let Some(index) = index {
        let missing: Vec<&str> = groups
            .iter()
            .filter(|g| !index.groups.contains_key(*g))
            .map(String::as_str)
            .collect();
        findings.push(if missing.is_empty() {
            Finding::ok(
                "groups_published",
                format!("every access group of this host is in the index ({})", groups.len()),
            )
        } else {
            Finding::fail(
                "groups_published",
                format!("not in the published index: {}", missing.join(", ")),
                "fix the spelling in the tag / settings, or add the group to access-groups.toml and publish",
            )
        });
    }

    // The timer: a cache confirmed within max_stale means refresh runs.
    let ages: Vec<Duration> = groups
        .iter()
        .filter_map(|g| cache.group(g).ok().flatten())
        .map(|c| c.meta.age(SystemTime::now()))
        .collect();
    let oldest = ages.iter().max().copied();
    findings.push(match oldest {
        Some(age) if ages.len() == groups.len() && age <= instance.max_stale => Finding::ok(
            "cache_fresh",
            format!(
                "every group file was confirmed within {}",
                humantime::format_duration(Duration::from_secs(age.as_secs() + 1))
            ),
        ),
        _ => Finding::fail(
            "cache_fresh",
            format!(
                "{} of {} group files are cached within max_stale: logins fail closed without them",
                ages.iter().filter(|a| **a <= instance.max_stale).count(),
                groups.len()
            ),
            "systemctl enable --now keyhole-refresh.timer, and read `journalctl -u keyhole-refresh`",
        ),
    });
    findings
}

/// Asks IMDS now (doctor is no login: it may wait for it) and compares with what `refresh`
/// cached. Returns the finding and the groups IMDS named, if it answered.
fn ec2_groups(
    cache: &Cache,
    source: &crate::settings::ImdsGroups,
    serving: &[String],
) -> (Finding, Option<Vec<String>>) {
    let cached = host_groups::read_resolved(cache).ok().flatten();
    let live =
        crate::instance::imds::Imds::new(&source.endpoint, host_groups::IMDS_ATTEMPT_TIMEOUT)
            .and_then(|imds| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(runtime.block_on(host_groups::resolve(&imds, source, SystemTime::now())))
            });
    let list = |groups: &[String]| {
        if groups.is_empty() {
            "none".to_owned()
        } else {
            groups.join(", ")
        }
    };
    match (live, cached) {
        (Ok(Ok(resolved)), _) if !resolved.invalid.is_empty() => (
            Finding::fail(
                "access_groups",
                format!(
                    "{} names {} that are not access group names",
                    resolved.source,
                    resolved.invalid.join(", ")
                ),
                "access group names are 1 to 63 characters of a-z, 0-9, `.`, `_`, `-`, comma-separated",
            ),
            Some(resolved.groups),
        ),
        (Ok(Ok(resolved)), cached) => {
            let pending = match &cached {
                Some(cached) if cached.groups == resolved.groups => String::new(),
                Some(_) | None => format!(
                    "; this host serves {} until the next `keyhole refresh`",
                    list(serving)
                ),
            };
            (
                Finding::ok(
                    "access_groups",
                    format!(
                        "{} names {}{pending}",
                        resolved.source,
                        list(&resolved.groups)
                    ),
                ),
                Some(resolved.groups),
            )
        }
        (live, cached) => {
            let why = match live {
                Ok(Err(failure)) => failure.to_string(),
                Err(error) => format!("{error:#}"),
                Ok(Ok(_)) => String::new(),
            };
            let detail = match cached {
                Some(cached) => format!(
                    "EC2 does not answer now ({why}); this host keeps serving the groups resolved {} ago: {}",
                    humantime::format_duration(Duration::from_secs(
                        cached.age(SystemTime::now()).as_secs()
                    )),
                    list(&cached.groups)
                ),
                None => format!(
                    "this host has never resolved its access groups from EC2 and serves none of them: {why}"
                ),
            };
            (
                Finding::fail("access_groups", detail, host_groups::how_to_fix(source)),
                None,
            )
        }
    }
}

/// sshd's effective `RevokedKeys` against keyhole's file and the cached index's list.
fn revoked_keys_finding(
    config: &[(String, String)],
    instance: Option<&crate::settings::InstanceSettings>,
) -> Finding {
    let cached = instance.and_then(|instance| {
        let cache = Cache::new(&instance.cache_dir);
        cache.index().ok().flatten().map(|(_, index)| index.revoked)
    });
    crate::instance::revoked::finding(
        doctor::sshd_value(config, "revokedkeys"),
        instance,
        cached.as_ref().map(Option::as_deref),
    )
}

/// Fetches and verifies the index and this host's files into a temporary cache (with this
/// host's resolved groups, so the same files are checked).
fn throwaway_refresh(
    settings: &Settings,
    cache: &Cache,
) -> anyhow::Result<crate::bucket::index::Index> {
    let scratch = tempfile::tempdir()?;
    let throwaway = Cache::new(scratch.path());
    if let Some(resolved) = host_groups::read_resolved(cache)? {
        host_groups::write_resolved(&throwaway, &resolved)?;
    }
    crate::instance::fetch::fetch(settings, &throwaway, S3_TIMEOUT)
}
