//! The instance's copy of the revocation list, for sshd's `RevokedKeys`
//! (`[instance] revoked_keys_file`, default [`DEFAULT_FILE`], which is kept current only where a
//! file is already there: the package installs one, and a refresh never creates a file in
//! /etc/ssh that nobody asked for).
//!
//! sshd checks `RevokedKeys` before any authorized_keys file or command, for every public key,
//! so a key on this list is refused on every login path: keyhole's `AuthorizedKeysCommand`, the
//! login user's and root's own `~/.ssh/authorized_keys` (where a departing engineer may have
//! planted a key), EC2 Instance Connect, and a stale cache.
//!
//! The danger is the other way round: **sshd refuses every public key when the file is missing,
//! unreadable, or has a line it cannot parse** (OpenSSH `auth.c`: any error checking the file
//! counts as revoked). So:
//! - The file is a plain public-key list (`TYPE BASE64 SHA256:…` a line, `#` comments), which
//!   every OpenSSH reads (7.4 included); a KRL's fingerprint sections would need 7.9.
//! - Every line comes from the signed list and is checked again here ([`parse_list`]): it decodes
//!   to its type and has the fingerprint it names. Keys of a type the local OpenSSH does not know
//!   (`sk-*` before 8.2, asked with `ssh -Q key`) are left out, with a warning: such a line would
//!   make an old sshd refuse everyone, and such a key cannot log in there anyway.
//! - It is written as temp file + fsync + rename (+ fsync of the directory) next to the file
//!   (next to a symlink's target when the path is a symlink), so sshd reads the old or the new
//!   list, never a part; any failure leaves the previous file in place.
//! - The package installs a valid empty list before its sshd drop-in points at it.
//!
//! The first line records which list (the SHA-256 the signed index names) the file holds, so
//! `refresh` rewrites it only when the list changed and `doctor` can tell a current file from a
//! stale one. Written by `keyhole refresh` (the timer), never on the login path.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::doctor::Finding;
use crate::bucket::index::{Index, Layout};
use crate::bucket::revocation_list::{Revoked, parse_list};
use crate::bucket::store::{Fetched, ObjectStore, S3Store, Timeouts};
use crate::digest::sha256_hex;
use crate::settings::{InstanceSettings, Settings};

/// Where the list goes when `[instance] revoked_keys_file` does not say.
pub const DEFAULT_FILE: &str = "/etc/ssh/keyhole_revoked_keys";

/// The start of the file's first line; the list's SHA-256 (or `none`) follows.
const MARK: &str = "# keyhole revoked keys, list ";

/// What the first line says when the index names no list (a publisher older than this feature).
const NO_LIST: &str = "none";

/// The key types OpenSSH 7.4, the oldest supported sshd, reads: what is written when the local
/// OpenSSH cannot be asked.
const OPENSSH_7_4_TYPES: &[&str] = &[
    "ssh-rsa",
    "ssh-dss",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
];

/// Brings `[instance] revoked_keys_file` to the list the verified `index` names (called by
/// `keyhole refresh` after the cache is current). Reads S3 only when the list changed.
pub fn update(settings: &Settings, index: &Index) -> anyhow::Result<()> {
    let instance = settings.instance()?;
    let path = instance.revoked_keys_path();
    // The default path is kept current only where something installed a file there (the
    // package does, before sshd names it): a refresh never creates a file in /etc/ssh that
    // nobody asked for. A path set in the settings is always written.
    if instance.revoked_keys_file.is_none() && fs::symlink_metadata(path).is_err() {
        tracing::info!(
            file = %path.display(),
            "no revoked keys file installed here: the revocation list is not written (set [instance] revoked_keys_file, or install the package's)"
        );
        return Ok(());
    }
    let wanted = index.revoked.as_deref().unwrap_or(NO_LIST);
    if written_list(path).as_deref() == Some(wanted) {
        return Ok(());
    }
    let keys = match &index.revoked {
        None => Vec::new(),
        Some(sha256) => {
            let s3 = settings.s3()?;
            let layout = Layout {
                prefix: s3.prefix.clone(),
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let body = runtime.block_on(async {
                let store = S3Store::connect(s3, Timeouts::PUBLISHER).await;
                fetch(&store, &layout, sha256).await
            })?;
            parse_list(&body).context("refusing the revocation list")?
        }
    };
    let body = render(wanted, &keys, &local_key_types());
    write_atomically(path, body.as_bytes())
        .with_context(|| format!("writing {} (the previous file stays)", path.display()))?;
    tracing::info!(
        file = %path.display(),
        list = wanted,
        keys = keys.len(),
        "wrote the revoked keys for sshd's RevokedKeys"
    );
    Ok(())
}

/// The list object `sha256` names, checked against it.
async fn fetch(store: &impl ObjectStore, layout: &Layout, sha256: &str) -> anyhow::Result<Vec<u8>> {
    let key = layout.revoked(sha256);
    let Fetched::Object(object) = store
        .get(&key, None)
        .await
        .with_context(|| format!("fetching {key}"))?
    else {
        bail!("{key} is named by the index but missing from the bucket");
    };
    let actual = sha256_hex(&object.body);
    if actual != sha256 {
        bail!("refusing {key}: its SHA-256 {actual} is not the {sha256} the index records");
    }
    Ok(object.body)
}

/// The file's text: the mark line, then each key whose type the local OpenSSH reads.
fn render(list: &str, keys: &[Revoked], known_types: &[String]) -> String {
    let (known, unknown): (Vec<&Revoked>, Vec<&Revoked>) = keys
        .iter()
        .partition(|key| known_types.contains(&key.key_type));
    if !unknown.is_empty() {
        let fingerprints: Vec<&str> = unknown.iter().map(|k| k.fingerprint.as_str()).collect();
        tracing::warn!(
            keys = ?fingerprints,
            "revoked keys of a type this host's OpenSSH does not know are left out of RevokedKeys (they cannot log in here)"
        );
    }
    let mut text =
        format!("{MARK}{list}: written by `keyhole refresh` for sshd's RevokedKeys; do not edit\n");
    for key in known {
        text.push_str(&format!("{} {}\n", key.key, key.fingerprint));
    }
    text
}

/// The list the file at `path` holds, from its first line; `None` when it is not keyhole's.
pub fn written_list(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let first = text.lines().next()?;
    let rest = first.strip_prefix(MARK)?;
    let (list, _) = rest.split_once(':')?;
    Some(list.to_owned())
}

/// The key types the local OpenSSH knows (`ssh -Q key`), else OpenSSH 7.4's.
fn local_key_types() -> Vec<String> {
    let asked = std::process::Command::new("ssh")
        .args(["-Q", "key"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    match asked {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| line.trim().to_owned())
            .filter(|line| !line.is_empty())
            .collect(),
        _ => OPENSSH_7_4_TYPES.iter().map(|t| (*t).to_owned()).collect(),
    }
}

/// Replaces `path` with `body`: a temporary file beside it (beside a symlink's target), fsync,
/// rename, fsync of the directory. Mode 0644: sshd reads it as root, nothing in it is secret.
pub fn write_atomically(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    let target = resolve(path);
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .context("the revoked keys file has no file name")?
        .to_string_lossy()
        .into_owned();
    let temp = dir.join(format!(".{name}.keyhole-{}", std::process::id()));
    let written = (|| -> anyhow::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temp)
            .with_context(|| format!("creating {}", temp.display()))?;
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.write_all(body)?;
        file.sync_all()?;
        fs::rename(&temp, &target)
            .with_context(|| format!("renaming {} to {}", temp.display(), target.display()))?;
        fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Where `path` leads through symlinks (a dangling one included: the package's link exists
/// before its target), so a write replaces the target and keeps the link.
fn resolve(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    for _ in 0..8 {
        match fs::read_link(&path) {
            Ok(target) => {
                path = match path.parent() {
                    Some(parent) => parent.join(target),
                    None => target,
                };
            }
            Err(_) => break,
        }
    }
    path
}

/// `doctor`'s check: sshd's effective `RevokedKeys` (`configured`, from `sshd -T`) is keyhole's
/// file, readable, and holds the list the cached index names (`cached_list`; `None` when
/// nothing is cached yet).
pub fn finding(
    configured: Option<&str>,
    instance: Option<&InstanceSettings>,
    cached_list: Option<Option<&str>>,
) -> Finding {
    const CHECK: &str = "revoked_keys";
    let expected = instance.map_or_else(
        || PathBuf::from(DEFAULT_FILE),
        |i| i.revoked_keys_path().to_path_buf(),
    );
    let Some(configured) = configured.filter(|v| !v.is_empty() && *v != "none") else {
        return Finding::fail(
            CHECK,
            "sshd has no RevokedKeys: a revoked key planted in a user's own ~/.ssh/authorized_keys \
             still logs in",
            format!(
                "RevokedKeys {} (the package's /etc/ssh/sshd_config.d/10-keyhole.conf), after \
                 `keyhole refresh` has written the file",
                expected.display()
            ),
        );
    };
    if Path::new(configured) != expected {
        return Finding::fail(
            CHECK,
            format!(
                "sshd reads RevokedKeys {configured}, but keyhole writes {}",
                expected.display()
            ),
            "make [instance] revoked_keys_file and sshd's RevokedKeys name the same file (before \
             OpenSSH 10.3 sshd reads only one)",
        );
    }
    let text = match fs::read(configured) {
        Ok(text) => text,
        Err(error) => {
            return Finding::fail(
                CHECK,
                format!(
                    "sshd's RevokedKeys {configured} cannot be read ({error}): sshd refuses EVERY \
                     public key, emergency keys included"
                ),
                format!(
                    "install a valid empty list now (`printf '# empty\\n' > {configured}`, 0644, \
                     root-readable), then run `keyhole refresh`"
                ),
            );
        }
    };
    let listed = String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    match (written_list(Path::new(configured)), cached_list) {
        (Some(written), Some(wanted)) if written == wanted.unwrap_or(NO_LIST) => Finding::ok(
            CHECK,
            format!(
                "sshd's RevokedKeys {configured} is readable and holds the current list ({listed} \
                 keys)"
            ),
        ),
        (written, Some(wanted)) => Finding::fail(
            CHECK,
            format!(
                "{configured} holds list {}, but the cached index names {}: revoked keys may \
                 still log in through other paths",
                written.as_deref().unwrap_or("(not written by keyhole)"),
                wanted.unwrap_or(NO_LIST)
            ),
            "run `keyhole refresh` and read its log (`journalctl -u keyhole-refresh`): it must be \
             able to write the file",
        ),
        // Whether the cache is current is `cache_fresh`'s to say.
        (_, None) => Finding::ok(
            CHECK,
            format!(
                "sshd's RevokedKeys {configured} is readable ({listed} keys); nothing is cached \
                 yet to compare it with"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPAo/RxVnDzNjGvP41+SlwXlH4IbNrQebofz9HvuaWq";

    fn revoked(key_type: &str) -> Revoked {
        Revoked {
            key_type: key_type.to_owned(),
            key: ED_A.replace("ssh-ed25519", key_type),
            fingerprint: "SHA256:x".to_owned(),
        }
    }

    #[test]
    fn the_file_names_its_list_and_leaves_out_types_sshd_does_not_know() {
        let keys = [
            revoked("ssh-ed25519"),
            revoked("sk-ssh-ed25519@openssh.com"),
        ];
        let old: Vec<String> = OPENSSH_7_4_TYPES.iter().map(|t| (*t).to_owned()).collect();
        let text = render("abc", &keys, &old);
        assert_eq!(
            text,
            format!(
                "{MARK}abc: written by `keyhole refresh` for sshd's RevokedKeys; do not edit\n\
                 {ED_A} SHA256:x\n"
            )
        );
    }

    #[test]
    fn a_write_replaces_the_file_or_leaves_it_and_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("state").join("revoked");
        fs::create_dir(real.parent().unwrap()).unwrap();
        let link = dir.path().join("keyhole_revoked_keys");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomically(&link, format!("{MARK}one: x\n").as_bytes()).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(written_list(&link).as_deref(), Some("one"));
        assert_eq!(
            fs::metadata(&real).unwrap().permissions().mode() & 0o777,
            0o644
        );
        write_atomically(&link, format!("{MARK}two: x\n").as_bytes()).unwrap();
        assert_eq!(written_list(&real).as_deref(), Some("two"));
        // A write that fails (here: its temporary name is taken) leaves the previous file.
        let blocker = dir
            .path()
            .join("state")
            .join(format!(".revoked.keyhole-{}", std::process::id()));
        fs::create_dir(&blocker).unwrap();
        assert!(write_atomically(&link, format!("{MARK}three: x\n").as_bytes()).is_err());
        assert_eq!(written_list(&link).as_deref(), Some("two"));
    }

    #[test]
    fn doctor_fails_a_missing_unreadable_foreign_or_stale_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked");
        let name = path.to_str().unwrap();
        let mut instance = crate::settings::InstanceSettings {
            login_user: "ec2-user".into(),
            access_groups: vec!["web".into()],
            cache_dir: dir.path().to_path_buf(),
            cache_ttl: std::time::Duration::from_secs(300),
            max_stale: std::time::Duration::from_secs(3600),
            fetch_timeout: std::time::Duration::from_secs(3),
            verify_key: None,
            allow_unsigned: true,
            imds: None,
            revoked_keys_file: Some(path.clone()),
        };
        assert!(!finding(None, Some(&instance), Some(Some("a"))).ok);
        assert!(!finding(Some("none"), Some(&instance), Some(Some("a"))).ok);
        let missing = finding(Some(name), Some(&instance), Some(Some("a")));
        assert!(
            !missing.ok && missing.detail.contains("EVERY"),
            "{missing:?}"
        );
        fs::write(&path, format!("{MARK}a: x\n")).unwrap();
        assert!(finding(Some(name), Some(&instance), Some(Some("a"))).ok);
        let stale = finding(Some(name), Some(&instance), Some(Some("b")));
        assert!(
            !stale.ok && stale.detail.contains("holds list a"),
            "{stale:?}"
        );
        instance.revoked_keys_file = Some(dir.path().join("other"));
        assert!(!finding(Some(name), Some(&instance), Some(Some("a"))).ok);
    }
}
