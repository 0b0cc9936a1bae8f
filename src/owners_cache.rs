//! The publisher's copy of the owners object, kept beside its lock file (`owners-cache`), so a
//! run that needs the owners records (some key is in two people's files) does not read the
//! whole object from S3 when it is the one already read or written.
//!
//! The owners object is addressed by content (`_keyhole/owners/{sha256}.json`, the SHA-256 named
//! by the verified index), so a local copy whose bytes hash to that SHA-256 is exactly the object
//! the index names, wherever the bytes came from. The copy only saves the transfer, never a
//! decision: the object is still asked for, with `If-None-Match` its ETag when the copy was made;
//! `304 Not Modified` means the bucket still holds those bytes, anything else (missing, another
//! ETag) is judged exactly as without a copy (`published::Published::owner_records`): a missing
//! or altered object is damaged, whatever the copy holds.
//!
//! File format: one JSON header line (format, version, deployment, SHA-256, ETag), then the
//! object's bytes. A copy that is not this user's private regular file, of another version or
//! deployment, or whose bytes do not hash to the SHA-256 asked for is ignored (the object is read
//! whole, as before). Written with temp file + fsync + rename, mode 0600.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::render::sha256_hex;

/// The copy's file name, in the lock file's directory.
pub const CACHE_FILE: &str = "owners-cache";

/// The version of the copy's format this keyhole reads and writes.
pub const VERSION: u32 = 1;

const FORMAT: &str = "keyhole-owners-cache";

/// The first line of the copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    deployment: String,
    sha256: String,
    etag: String,
}

/// Where the copy lives and which deployment it belongs to.
#[derive(Debug, Clone)]
pub struct OwnersCache {
    path: PathBuf,
    deployment: String,
}

impl OwnersCache {
    /// The copy beside `lock_file`, for `deployment` (`s3://bucket/prefix`).
    pub fn beside(lock_file: &Path, deployment: &str) -> OwnersCache {
        let path = lock_file
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(CACHE_FILE);
        OwnersCache {
            path,
            deployment: deployment.to_owned(),
        }
    }

    /// The copied object named `sha256` and the ETag it had, when the copy holds exactly it.
    pub fn get(&self, sha256: &str) -> Option<(Vec<u8>, String)> {
        match self.read(sha256) {
            Ok(found) => found,
            Err(why) => {
                tracing::warn!(
                    "the copy of the owners object {} is not used: {why}",
                    self.path.display()
                );
                None
            }
        }
    }

    fn read(&self, sha256: &str) -> Result<Option<(Vec<u8>, String)>, String> {
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&self.path)
        {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(format!("it cannot be opened: {error}")),
        };
        let meta = file
            .metadata()
            .map_err(|error| format!("it cannot be examined: {error}"))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if !meta.file_type().is_file() || meta.uid() != euid || meta.mode() & 0o077 != 0 {
            return Err(format!(
                "it must be a regular file owned by uid {euid} and readable by it alone"
            ));
        }
        let mut bytes = Vec::new();
        file.take(crate::store::MAX_OBJECT_BYTES + 4096)
            .read_to_end(&mut bytes)
            .map_err(|error| format!("it cannot be read: {error}"))?;
        let newline = bytes
            .iter()
            .position(|&byte| byte == b'\n')
            .ok_or("it has no header line")?;
        let header: Header = serde_json::from_slice(&bytes[..newline])
            .map_err(|error| format!("its header does not parse: {error}"))?;
        if header.format != FORMAT || header.version != VERSION {
            return Err(format!(
                "it is {} version {}; this keyhole reads {FORMAT} version {VERSION}",
                header.format, header.version
            ));
        }
        if header.deployment != self.deployment {
            return Err(format!(
                "it was written for {}, not {}",
                header.deployment, self.deployment
            ));
        }
        if header.sha256 != sha256 {
            // Another owners object (the index moved on): not an error, just not this one.
            return Ok(None);
        }
        let body = bytes.split_off(newline + 1);
        if sha256_hex(&body) != sha256 {
            return Err("its bytes do not hash to the SHA-256 it names (damaged)".to_owned());
        }
        Ok(Some((body, header.etag)))
    }

    /// Keeps `body`, the owners object `sha256` as the bucket holds it with `etag`. A copy that
    /// cannot be written costs the next run a whole read; it is logged, never an error.
    pub fn put(&self, sha256: &str, etag: &str, body: &[u8]) {
        if etag.is_empty() || sha256_hex(body) != sha256 {
            return;
        }
        let header = Header {
            format: FORMAT.to_owned(),
            version: VERSION,
            deployment: self.deployment.clone(),
            sha256: sha256.to_owned(),
            etag: etag.to_owned(),
        };
        if let Err(error) = self.write(&header, body) {
            tracing::warn!(
                "could not keep a copy of the owners object in {}: {error}; the next run that \
                 needs it reads it whole",
                self.path.display()
            );
        }
    }

    fn write(&self, header: &Header, body: &[u8]) -> std::io::Result<()> {
        let temporary = self.path.with_extension("tmp");
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
        let mut line = serde_json::to_vec(header).map_err(std::io::Error::other)?;
        line.push(b'\n');
        file.write_all(&line)?;
        file.write_all(body)?;
        file.sync_all()?;
        fs::rename(&temporary, &self.path)?;
        if let Some(parent) = self.path.parent()
            && let Ok(directory) = fs::File::open(parent)
        {
            let _ = directory.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_copy_serves_only_the_object_it_holds_for_its_deployment() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("publish.lock");
        let cache = OwnersCache::beside(&lock, "s3://bucket/ssh/");
        let body = b"{\"SHA256:x\":{\"user\":\"bob\"}}\n";
        let sha = sha256_hex(body);
        assert_eq!(cache.get(&sha), None);
        cache.put(&sha, "\"etag-1\"", body);
        let path = dir.path().join(CACHE_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(cache.get(&sha), Some((body.to_vec(), "\"etag-1\"".into())));
        // Another object asked for.
        assert_eq!(cache.get(&"0".repeat(64)), None);
        // Another deployment.
        let other = OwnersCache::beside(&lock, "s3://other/ssh/");
        assert_eq!(other.get(&sha), None);
        // Bytes that do not hash to the name: ignored.
        let mut damaged = fs::read(&path).unwrap();
        let last = damaged.len() - 3;
        damaged[last] ^= 0x01;
        fs::write(&path, &damaged).unwrap();
        assert_eq!(cache.get(&sha), None);
        // Readable by others: ignored.
        cache.put(&sha, "\"etag-1\"", body);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(cache.get(&sha), None);
        // Bytes that are not the object named are never kept.
        fs::remove_file(&path).unwrap();
        cache.put(&sha, "\"etag-1\"", b"other bytes");
        assert!(!path.exists());
    }
}
