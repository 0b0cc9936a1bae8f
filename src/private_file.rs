//! The publisher's private files beside its lock file (the directory and homes states, the
//! render memo, the copies of bucket objects): written whole or not at all, readable by their
//! owner only, and checked before they are believed.
//!
//! Writing: a temp file named for this process (a `plan`, which takes no lock, and a `publish`
//! may write at once; each renames only its own whole file, and the last rename wins), created
//! with `O_NOFOLLOW` and mode 0600 (a leftover of a crashed run, or someone else's file, is
//! removed, never written through), fsynced, renamed over the file, and the directory fsynced.
//!
//! Reading: only a regular file owned by this user with no group or other permission bits is
//! read, opened with `O_NOFOLLOW`, at most `limit` bytes.
//!
//! The states are checksummed: a header line `<magic> <version> <sha256 of the rest>` over the
//! body ([`checksummed`], [`checked_body`]), so a torn or edited file is refused whole.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// `name` in the lock file's directory: where the publisher keeps what it remembers.
pub fn beside(lock_file: &Path, name: &str) -> PathBuf {
    lock_file
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(name)
}

/// The header line of a checksummed file holding `body`.
pub fn checksummed(magic: &str, version: u32, body: &[u8]) -> String {
    format!("{magic} {version} {}\n", crate::digest::sha256_hex(body))
}

/// The body of a checksummed file (`what` names it in the reasons), or why it is not believed:
/// another kind of file, another version, or a checksum that does not match.
pub fn checked_body<'a>(
    bytes: &'a [u8],
    magic: &str,
    version: u32,
    what: &str,
) -> Result<&'a [u8], String> {
    let newline = bytes
        .iter()
        .position(|&byte| byte == b'\n')
        .ok_or_else(|| format!("it is not a keyhole {what} (no header line)"))?;
    let (header, body) = (&bytes[..newline], &bytes[newline + 1..]);
    let header = std::str::from_utf8(header)
        .map_err(|_| format!("it is not a keyhole {what} (the header is not text)"))?;
    let fields: Vec<&str> = header.split(' ').collect();
    let [found_magic, found_version, checksum] = fields[..] else {
        return Err(format!(
            "it is not a keyhole {what} (its header is not one)"
        ));
    };
    if found_magic != magic {
        return Err(format!("it is not a keyhole {what}"));
    }
    if found_version != version.to_string() {
        return Err(format!(
            "it was written in format {found_version:?}, and this keyhole reads format {version}"
        ));
    }
    if crate::digest::sha256_hex(body) != checksum {
        return Err("it is damaged (its checksum does not match its contents)".to_owned());
    }
    Ok(body)
}

/// Writes `parts`, one after the other, as the whole new content of `path`.
pub fn write_atomically(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let temporary = path.with_extension(format!("tmp.{}", std::process::id()));
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temporary)?;
    for part in parts {
        file.write_all(part)?;
    }
    file.sync_all()?;
    fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent()
        && let Ok(directory) = fs::File::open(parent)
    {
        // The rename is durable once the directory is; losing it only costs a cache.
        let _ = directory.sync_all();
    }
    Ok(())
}

/// Why a private file was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum Unread {
    Missing,
    /// There, but not to be believed (why, in words).
    Refused(String),
}

/// Reads `path` if it is this user's private regular file of at most `limit` bytes.
pub fn read_private(path: &Path, limit: u64) -> Result<Vec<u8>, Unread> {
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(Unread::Missing),
        Err(error) => return Err(Unread::Refused(format!("it cannot be opened: {error}"))),
    };
    let meta = file
        .metadata()
        .map_err(|error| Unread::Refused(format!("it cannot be examined: {error}")))?;
    if !meta.file_type().is_file() {
        return Err(Unread::Refused("it is not a regular file".into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(Unread::Refused(format!(
            "it must be owned by uid {me} and readable by it alone (it is uid {}, mode {:04o})",
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    if meta.len() > limit {
        return Err(Unread::Refused(format!(
            "it is {} bytes, more than the {limit} read",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|error| Unread::Refused(format!("it cannot be read: {error}")))?;
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_written_file_is_private_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write_atomically(&path, &[b"header\n", b"body"]).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_private(&path, 1024).unwrap(), b"header\nbody");
        // No temp file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_checksummed_body_is_given_back_only_whole_and_of_its_kind() {
        let body = b"{\"a\":1}";
        let mut file = checksummed("keyhole-x", 2, body).into_bytes();
        file.extend_from_slice(body);
        assert_eq!(checked_body(&file, "keyhole-x", 2, "x").unwrap(), body);
        let why = |result: Result<&[u8], String>| result.unwrap_err();
        assert!(why(checked_body(&file, "keyhole-y", 2, "y")).contains("not a keyhole y"));
        assert!(why(checked_body(&file, "keyhole-x", 3, "x")).contains("format \"2\""));
        let mut torn = file.clone();
        torn.pop();
        assert!(why(checked_body(&torn, "keyhole-x", 2, "x")).contains("checksum does not match"));
        assert!(why(checked_body(b"no header", "keyhole-x", 2, "x")).contains("no header"));
    }

    #[test]
    fn a_file_others_may_read_a_symlink_or_a_big_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write_atomically(&path, &[b"0123456789"]).unwrap();
        assert!(
            matches!(read_private(&path, 5), Err(Unread::Refused(why)) if why.contains("10 bytes"))
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            matches!(read_private(&path, 1024), Err(Unread::Refused(why)) if why.contains("644"))
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(read_private(&link, 1024), Err(Unread::Refused(_))));
        assert_eq!(
            read_private(&dir.path().join("missing"), 1024),
            Err(Unread::Missing)
        );
    }
}
