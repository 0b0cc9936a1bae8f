//! `[ssh]` and `[ssh.bastions]`: `keyhole ssh` on an engineer's machine (see `crate::ssh`), and
//! where that command finds its settings file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::check::Checker;
use super::{CONFIG_ENV, DEFAULT_PATH};

// ---- `[ssh]`: `keyhole ssh` on an engineer's machine (see `crate::ssh`). ----

/// `[ssh]` and `[ssh.bastions]`.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Availability zone, VPC ID or region → the bastion (`[user@]host[:port]`, or a `Host` of
    /// the engineer's ssh_config). Chosen by the instance's zone, then its VPC, then its region
    /// (see `crate::ssh::bastion`).
    pub bastions: std::collections::BTreeMap<String, String>,
    /// Logged in as when neither `USER@` nor the instance's `login_user_tag` says.
    pub login_user: String,
    /// The instance tag naming its login user (an AMI whose user is `ubuntu` or `admin`).
    pub login_user_tag: String,
    /// The instance tag listing its access groups, as `[instance] access_groups_tag` reads it.
    pub access_groups_tag: String,
    /// Where DescribeInstances goes: region (default: the AWS chain's) and endpoint (default AWS's).
    pub region: Option<String>,
    pub ec2_endpoint: Option<String>,
    /// The deployment's signing public key, to verify the index `--explain` reads. Default:
    /// `[instance] verify_key`, else the public half of `[signing] key_file`.
    pub verify_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSsh {
    bastions: Option<std::collections::BTreeMap<String, String>>,
    login_user: Option<String>,
    login_user_tag: Option<String>,
    access_groups_tag: Option<String>,
    region: Option<String>,
    ec2_endpoint: Option<String>,
    verify_key: Option<String>,
}

pub(super) fn validate(raw: RawSsh, check: &mut Checker) -> SshSettings {
    const S: &str = "ssh";
    let bastions = raw.bastions.unwrap_or_default();
    for (place, bastion) in &bastions {
        let place_ok = !place.is_empty()
            && place
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !place_ok {
            check.error(
                S,
                "bastions",
                format!("{place:?} is not an availability zone, VPC ID or region (e.g. \"eu-west-1a\", \"vpc-0abc123\", \"eu-west-1\")"),
            );
        }
        if let Some(problem) = crate::ssh::jump_host_problem(bastion) {
            check.error(S, "bastions", format!("{place:?} = {bastion:?}: {problem}"));
        }
    }
    let login_user = check
        .non_empty(S, "login_user", raw.login_user)
        .unwrap_or_else(|| crate::ssh::DEFAULT_LOGIN_USER.to_owned());
    if let Some(problem) = crate::ssh::login_user_problem(&login_user) {
        check.error(S, "login_user", problem);
    }
    if let Some(endpoint) = &raw.ec2_endpoint
        && !endpoint.starts_with("https://")
        && !endpoint.starts_with("http://")
    {
        check.error(
            S,
            "ec2_endpoint",
            format!("{endpoint:?} must be an http(s):// URL"),
        );
    }
    SshSettings {
        bastions,
        login_user,
        login_user_tag: check
            .non_empty(S, "login_user_tag", raw.login_user_tag)
            .unwrap_or_else(|| crate::ssh::DEFAULT_LOGIN_USER_TAG.to_owned()),
        access_groups_tag: check
            .non_empty(S, "access_groups_tag", raw.access_groups_tag)
            .unwrap_or_else(|| crate::instance::host_groups::USER_DATA_KEY.to_owned()),
        region: check.non_empty(S, "region", raw.region),
        ec2_endpoint: raw.ec2_endpoint,
        verify_key: check.non_empty(S, "verify_key", raw.verify_key),
    }
}

/// The settings file `keyhole ssh` reads: `--config`, else `KEYHOLE_CONFIG`, else
/// [`DEFAULT_PATH`] when it exists, else the engineer's own `$XDG_CONFIG_HOME/keyhole/keyhole.toml`
/// (default `~/.config/keyhole/keyhole.toml`): a laptop has no `/etc/keyhole`, and an engineer
/// should not need root to say where the bastions are.
pub fn locate_for_engineer(config: Option<&Path>) -> PathBuf {
    let explicit = config.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(CONFIG_ENV)
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
    });
    let etc = Path::new(DEFAULT_PATH);
    engineer_path(
        explicit,
        etc.exists(),
        std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

pub(super) fn engineer_path(
    explicit: Option<PathBuf>,
    etc_exists: bool,
    xdg_config_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> PathBuf {
    if let Some(path) = explicit {
        return path;
    }
    if etc_exists {
        return PathBuf::from(DEFAULT_PATH);
    }
    // XDG: a relative XDG_CONFIG_HOME is invalid and ignored.
    let config_home = xdg_config_home
        .filter(|dir| dir.is_absolute())
        .or_else(|| home.map(|home| home.join(".config")));
    match config_home {
        Some(dir) => dir.join("keyhole").join("keyhole.toml"),
        None => PathBuf::from(DEFAULT_PATH),
    }
}
