//! `keyhole doctor`'s checks: everything sshd and the refresh timer depend on, each a
//! [`Finding`] with what was seen and how to fix it.
//!
//! Most checks are pure functions of what the command gathered (the effective sshd config as
//! `sshd -T` prints it, file metadata, account entries) so that each rule is unit-tested; [`examine`]
//! does the gathering. The rules are sshd's own (OpenSSH `auth2-pubkey.c`,
//! `misc.c: safe_path`): the first value of a keyword wins, `-o` on sshd's command line beats
//! every file, and the AuthorizedKeysCommand and every directory above it must be owned by root
//! and writable by nobody else, or sshd refuses to run it and logs in nobody through it.
//!
//! Doctor only reads: it never changes the sshd config, the cache, or anything in S3.

pub mod examine;

use std::ffi::{CStr, CString};
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// A stable name monitoring can key on, e.g. `authorized_keys_command`.
    pub check: &'static str,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do; `None` when the check holds.
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            check,
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// All findings; `ok` only when every one holds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub ok: bool,
}

impl Report {
    pub fn new(findings: Vec<Finding>) -> Report {
        let ok = findings.iter().all(|f| f.ok);
        Report { findings, ok }
    }

    /// One line per finding, the fix indented under a failed one.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for finding in &self.findings {
            let mark = if finding.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "{mark} {}: {}", finding.check, finding.detail);
            if let Some(fix) = &finding.fix {
                let _ = writeln!(out, "     fix: {fix}");
            }
        }
        let failed = self.findings.iter().filter(|f| !f.ok).count();
        if failed == 0 {
            let _ = writeln!(out, "all {} checks hold", self.findings.len());
        } else {
            let _ = writeln!(out, "{failed} of {} checks fail", self.findings.len());
        }
        out
    }
}

/// The effective sshd config as `sshd -T` prints it: lower-case keyword, a space, the value.
/// A keyword printed more than once (e.g. `hostkey`) keeps its first value, as sshd does.
pub fn parse_sshd_t(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|line| {
            let (keyword, value) = line.split_once(' ').unwrap_or((line, ""));
            (!keyword.is_empty()).then(|| (keyword.to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect()
}

/// The first value of `keyword` in `sshd -T` output.
pub fn sshd_value<'a>(config: &'a [(String, String)], keyword: &str) -> Option<&'a str> {
    config
        .iter()
        .find(|(k, _)| k == keyword)
        .map(|(_, v)| v.as_str())
}

/// The command words of an AuthorizedKeysCommand, split as sshd does (blanks; double quotes
/// group).
pub fn command_words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in command.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// Whether `command` runs keyhole's `authorized-keys`: a program named `keyhole…` (the binary,
/// or a wrapper named after it) whose arguments include `authorized-keys`.
pub fn is_keyhole(command: &str) -> bool {
    let words = command_words(command);
    words.first().is_some_and(|program| {
        Path::new(program)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("keyhole"))
    }) && (words.iter().any(|w| w == "authorized-keys")
        || words
            .first()
            .is_some_and(|p| p.ends_with("authorized-keys")))
}

/// Where a keyword is set in an sshd config file and the files it includes, in the order sshd
/// reads them: `(file, line number, value)`. Used to point at the line that shadows keyhole.
pub fn keyword_lines(config: &Path, keyword: &str) -> Vec<(PathBuf, usize, String)> {
    let mut found = Vec::new();
    scan_config(config, keyword, &mut found, 0);
    found
}

fn scan_config(file: &Path, keyword: &str, found: &mut Vec<(PathBuf, usize, String)>, depth: u8) {
    // sshd itself stops at 16 levels of Include.
    if depth > 16 {
        return;
    }
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (word, rest) = line
            .split_once(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or((line, ""));
        let rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '=');
        if word.eq_ignore_ascii_case("include") {
            for pattern in command_words(rest) {
                // Relative Include paths are relative to /etc/ssh, as in sshd.
                let pattern = if pattern.starts_with('/') {
                    PathBuf::from(pattern)
                } else {
                    Path::new("/etc/ssh").join(pattern)
                };
                for included in expand_glob(&pattern) {
                    scan_config(&included, keyword, found, depth + 1);
                }
            }
        } else if word.eq_ignore_ascii_case(keyword) {
            found.push((file.to_path_buf(), number + 1, rest.to_owned()));
        }
    }
}

/// `*` and `?` in the last path component, sorted as sshd's glob(3) does.
fn expand_glob(pattern: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (
        pattern.parent(),
        pattern.file_name().and_then(|n| n.to_str()),
    ) else {
        return vec![];
    };
    if !name.contains(['*', '?']) {
        return vec![pattern.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut matches: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| wildcard(name, n)))
        .map(|e| e.path())
        .collect();
    matches.sort();
    matches
}

fn wildcard(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    // Like glob(3), a leading dot is matched only explicitly.
    (pattern.starts_with('.') || !name.starts_with('.')) && go(pattern.as_bytes(), name.as_bytes())
}

/// systemd units and drop-ins for sshd that pass their own AuthorizedKeysCommand with `-o`
/// (EC2 Instance Connect installs one): `(file, line)`. Such a flag beats every config file.
pub fn systemd_overrides(dirs: &[PathBuf]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for dir in dirs {
        for unit in [
            "ssh.service",
            "sshd.service",
            "ssh@.service",
            "sshd@.service",
        ] {
            let mut files = vec![dir.join(unit)];
            if let Ok(entries) = std::fs::read_dir(dir.join(format!("{unit}.d"))) {
                let mut dropins: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "conf"))
                    .collect();
                dropins.sort();
                files.extend(dropins);
            }
            for file in files {
                let Ok(text) = std::fs::read_to_string(&file) else {
                    continue;
                };
                for line in text.lines() {
                    let line = line.trim();
                    if line.starts_with("ExecStart=")
                        && line.to_ascii_lowercase().contains("authorizedkeyscommand")
                    {
                        found.push((file.clone(), line.to_owned()));
                    }
                }
            }
        }
    }
    found
}

/// sshd's rule for an AuthorizedKeysCommand: an absolute path to a regular file, which and
/// every directory above which is owned by root and not writable by group or others.
pub fn sshd_safe_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    let metadata = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mut current = Some(path);
    while let Some(p) = current {
        let metadata = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if metadata.uid() != 0 {
            return Err(format!(
                "{} is owned by uid {}, not root",
                p.display(),
                metadata.uid()
            ));
        }
        if metadata.mode() & 0o022 != 0 {
            return Err(format!(
                "{} is writable by its group or by others (mode {:04o})",
                p.display(),
                metadata.mode() & 0o7777
            ));
        }
        current = p.parent();
    }
    Ok(())
}

/// A local account, as the name service gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Every group the account is in, its primary group included.
    pub groups: Vec<u32>,
}

/// Looks `name` up with getpwnam_r / getgrouplist (so NSS sources count, as they do for sshd).
pub fn account(name: &str) -> Option<Account> {
    let c_name = CString::new(name).ok()?;
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter; getpwnam_r writes it and points its
    // strings into `buffer`, which outlives every use below.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buffer.len()` is its real size.
    let status = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    if status != 0 || result.is_null() {
        return None;
    }
    // SAFETY: getpwnam_r succeeded, so pw_name is a NUL-terminated string in `buffer`.
    let found_name = unsafe { CStr::from_ptr(entry.pw_name) }
        .to_string_lossy()
        .into_owned();
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut count = groups.len() as libc::c_int;
    // SAFETY: `groups` has room for `count` entries; getgrouplist writes at most that many and
    // sets `count` to how many there are.
    let status = unsafe {
        libc::getgrouplist(
            c_name.as_ptr(),
            entry.pw_gid,
            groups.as_mut_ptr(),
            &mut count,
        )
    };
    let groups = if status < 0 {
        vec![entry.pw_gid]
    } else {
        groups.truncate(usize::try_from(count).unwrap_or(0));
        groups
    };
    Some(Account {
        name: found_name,
        uid: entry.pw_uid,
        gid: entry.pw_gid,
        groups,
    })
}

/// What an account needs to do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    /// Create and replace files in a directory: write and search.
    WriteDir,
}

/// Whether `account` may `access` `path`, by the mode bits along the way (every directory
/// above must be searchable). Root may do anything. ACLs and SELinux are not looked at.
pub fn may_access(account: &Account, path: &Path, access: Access) -> Result<(), String> {
    if account.uid == 0 {
        return Ok(());
    }
    let bits = |metadata: &std::fs::Metadata| -> u32 {
        let mode = metadata.mode();
        if metadata.uid() == account.uid {
            (mode >> 6) & 7
        } else if account.groups.contains(&metadata.gid()) {
            (mode >> 3) & 7
        } else {
            mode & 7
        }
    };
    let metadata = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (wanted, what) = match access {
        Access::Read => (4, "read"),
        Access::WriteDir => (3, "write in"),
    };
    if bits(&metadata) & wanted != wanted {
        return Err(format!(
            "{} may not {what} {} (owner uid {}, group gid {}, mode {:04o})",
            account.name,
            path.display(),
            metadata.uid(),
            metadata.gid(),
            metadata.mode() & 0o7777
        ));
    }
    let mut parent = path.parent();
    while let Some(dir) = parent {
        if dir.as_os_str().is_empty() {
            break;
        }
        let metadata = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if bits(&metadata) & 1 == 0 {
            return Err(format!(
                "{} may not enter {} (owner uid {}, group gid {}, mode {:04o})",
                account.name,
                dir.display(),
                metadata.uid(),
                metadata.gid(),
                metadata.mode() & 0o7777
            ));
        }
        parent = dir.parent();
    }
    Ok(())
}

/// The checks on the effective sshd config: the command, its arguments, its user, and the
/// fallback file. `config_file` is where to look for the line that shadows keyhole.
pub fn sshd_findings(
    config: &[(String, String)],
    config_file: &Path,
) -> (Vec<Finding>, Option<String>, Option<String>) {
    let mut findings = Vec::new();
    let command = sshd_value(config, "authorizedkeyscommand").filter(|v| *v != "none");
    match command {
        Some(command) if is_keyhole(command) => {
            findings.push(Finding::ok(
                "authorized_keys_command",
                format!("sshd runs `{command}`"),
            ));
            let words = command_words(command);
            let missing: Vec<&str> = ["%u", "%f"]
                .into_iter()
                .filter(|token| !words.iter().any(|w| w == token))
                .collect();
            if missing.is_empty() {
                findings.push(Finding::ok(
                    "authorized_keys_command_arguments",
                    "the command gets the user (%u) and the key's fingerprint (%f)",
                ));
            } else {
                findings.push(Finding::fail(
                    "authorized_keys_command_arguments",
                    format!(
                        "the command lacks {}: {}",
                        missing.join(" and "),
                        if missing.contains(&"%u") {
                            "keyhole cannot tell the login user"
                        } else {
                            "logins cannot be attributed to a person"
                        }
                    ),
                    format!(
                        "AuthorizedKeysCommand {} authorized-keys %u %f",
                        words.first().map_or("/usr/bin/keyhole", String::as_str)
                    ),
                ));
            }
        }
        other => {
            let lines = keyword_lines(config_file, "AuthorizedKeysCommand");
            let first_line = lines
                .first()
                .map(|(file, line, value)| format!("{}:{line} sets `{value}`", file.display()));
            let detail = match (other, &first_line) {
                (Some(command), Some(at)) => {
                    format!("sshd runs `{command}`, not keyhole: {at}, and the first value wins")
                }
                (Some(command), None) => format!("sshd runs `{command}`, not keyhole"),
                (None, _) => "sshd has no AuthorizedKeysCommand".to_owned(),
            };
            let fix = match &first_line {
                Some(at) if other.is_some() => format!(
                    "remove or comment out the earlier line ({at}), or put keyhole's drop-in before it (a lower-numbered file in /etc/ssh/sshd_config.d)"
                ),
                _ => "AuthorizedKeysCommand /usr/bin/keyhole authorized-keys %u %f (the package's /etc/ssh/sshd_config.d/10-keyhole.conf; sshd_config must `Include /etc/ssh/sshd_config.d/*.conf` before its own settings)".to_owned(),
            };
            findings.push(Finding::fail("authorized_keys_command", detail, fix));
        }
    }

    let user = sshd_value(config, "authorizedkeyscommanduser").filter(|v| *v != "none");
    match user {
        None => findings.push(Finding::fail(
            "authorized_keys_command_user",
            "AuthorizedKeysCommandUser is not set: sshd refuses to run the command",
            "AuthorizedKeysCommandUser keyhole",
        )),
        Some(name) => match account(name) {
            None => findings.push(Finding::fail(
                "authorized_keys_command_user",
                format!("AuthorizedKeysCommandUser {name} does not exist"),
                format!(
                    "create it (`useradd --system --no-create-home --shell /usr/sbin/nologin {name}`) or name an existing unprivileged user"
                ),
            )),
            Some(account) if account.uid == 0 => findings.push(Finding::fail(
                "authorized_keys_command_user",
                format!("the command runs as {name}, with root's privileges"),
                "AuthorizedKeysCommandUser keyhole (an unprivileged user that owns the cache)",
            )),
            Some(account) => findings.push(Finding::ok(
                "authorized_keys_command_user",
                format!("the command runs as {name} (uid {})", account.uid),
            )),
        },
    }

    match sshd_value(config, "authorizedkeysfile") {
        Some(files) if !files.is_empty() && files != "none" => findings.push(Finding::ok(
            "authorized_keys_file",
            format!(
                "AuthorizedKeysFile {files} stays as the fallback for the static emergency keys"
            ),
        )),
        _ => findings.push(Finding::fail(
            "authorized_keys_file",
            "AuthorizedKeysFile is none: when keyhole fails closed, no emergency key can log in",
            "AuthorizedKeysFile .ssh/authorized_keys (keep the break-glass keys there)",
        )),
    }
    (
        findings,
        command.map(str::to_owned),
        user.map(str::to_owned),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_split_as_sshd_does_and_keyhole_is_recognised() {
        assert_eq!(
            command_words("/usr/bin/keyhole  \"--config\" /etc/k.toml authorized-keys %u %f"),
            [
                "/usr/bin/keyhole",
                "--config",
                "/etc/k.toml",
                "authorized-keys",
                "%u",
                "%f"
            ]
        );
        assert!(is_keyhole("/usr/bin/keyhole authorized-keys %u %f"));
        assert!(is_keyhole("/run/x/keyhole-authorized-keys %u %f"));
        assert!(!is_keyhole("/usr/bin/keyhole refresh"));
        assert!(!is_keyhole(
            "/usr/share/ec2-instance-connect/eic_run_authorized_keys %u %f"
        ));
    }

    #[test]
    fn sshd_t_output_keeps_the_first_value() {
        let config = parse_sshd_t(
            "port 22\nhostkey /a\nhostkey /b\nauthorizedkeysfile .ssh/authorized_keys .ssh/authorized_keys2\n",
        );
        assert_eq!(sshd_value(&config, "hostkey"), Some("/a"));
        assert_eq!(
            sshd_value(&config, "authorizedkeysfile"),
            Some(".ssh/authorized_keys .ssh/authorized_keys2")
        );
        assert_eq!(sshd_value(&config, "authorizedkeyscommand"), None);
    }

    #[test]
    fn wildcards_match_like_glob() {
        assert!(wildcard("*.conf", "10-keyhole.conf"));
        assert!(!wildcard("*.conf", ".hidden.conf"));
        assert!(!wildcard("*.conf", "x.conf.bak"));
        assert!(wildcard("5?-*.conf", "50-x.conf"));
    }

    #[test]
    fn the_shadowing_line_is_found_through_includes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("sshd_config.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("05-other.conf"),
            "AuthorizedKeysCommand /opt/other %u\n",
        )
        .unwrap();
        std::fs::write(
            d.join("10-keyhole.conf"),
            "# keyhole\nAuthorizedKeysCommand=/usr/bin/keyhole authorized-keys %u %f\n",
        )
        .unwrap();
        let main = dir.path().join("sshd_config");
        std::fs::write(&main, format!("Include {}/*.conf\nPort 22\n", d.display())).unwrap();
        let lines = keyword_lines(&main, "AuthorizedKeysCommand");
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0].0, d.join("05-other.conf"));
        assert_eq!((lines[0].1, lines[0].2.as_str()), (1, "/opt/other %u"));
        assert_eq!(lines[1].1, 2);
    }

    #[test]
    fn access_follows_owner_group_and_other_bits_and_every_parent() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keyhole.toml");
        std::fs::write(&file, "").unwrap();
        let me = account("nobody").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // Owned by root (the tests run as root): nobody is "other", and 0640 gives other nothing.
        assert!(may_access(&me, &file, Access::Read).is_err());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        may_access(&me, &file, Access::Read).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let error = may_access(&me, &file, Access::Read).unwrap_err();
        assert!(error.contains("may not enter"), "{error}");
        assert!(may_access(&account("root").unwrap(), &file, Access::Read).is_ok());
    }
}
