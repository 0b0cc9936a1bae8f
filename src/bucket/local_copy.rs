//! The publisher's copies of the two bucket objects every run needs, kept beside its lock file:
//! the index (`index-copy`) and the owners object (`owners-copy`), so a run where nothing changed
//! reads their ETags (a HEAD each, no body) instead of their bytes, and S3 traffic stays a few
//! hundred bytes a run however many access groups and keys there are.
//!
//! A copy only saves the transfer, never a decision. It is used only when the object's ETag,
//! asked for with a HEAD (some S3-compatible servers ignore `If-None-Match` on GET and send the
//! whole body), is the one the copy was made with: the bucket still holds exactly those bytes
//! (S3 gives an object written again a new ETag). Anything else (missing, another ETag) is read
//! and judged exactly as without a copy: the index is verified by its signature and the
//! publisher's head whatever its source, and the owners object, addressed by content, must hash
//! to the SHA-256 the verified index names; a missing or altered one is damaged whatever a copy
//! holds.
//!
//! File format: one JSON header line (format, version, deployment, SHA-256 and ETag of the
//! object), then the object's bytes. A copy that is not this user's private regular file, of
//! another version or deployment, or whose bytes do not hash to its SHA-256 is not used (the
//! object is read whole, as without one). Written with temp file + fsync + rename, mode 0600.

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::sha256_hex;

/// The index's copy, in the lock file's directory.
pub const INDEX_COPY: &str = "index-copy";

/// The owners object's copy, in the lock file's directory.
pub const OWNERS_COPY: &str = "owners-copy";

/// The version of the copy's format this keyhole reads and writes.
pub const VERSION: u32 = 1;

const FORMAT: &str = "keyhole-object-copy";

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

/// Where a copy lives and which deployment it belongs to.
#[derive(Debug, Clone)]
pub struct ObjectCopy {
    path: PathBuf,
    deployment: String,
}

/// A copy as read: the object's bytes, their SHA-256, and the ETag they had in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub body: Vec<u8>,
    pub sha256: String,
    pub etag: String,
}

impl ObjectCopy {
    /// The copy named `name` ([`INDEX_COPY`], [`OWNERS_COPY`]) beside `lock_file`, for
    /// `deployment` (`s3://bucket/prefix`).
    pub fn beside(lock_file: &Path, name: &str, deployment: &str) -> ObjectCopy {
        let path = lock_file
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(name);
        ObjectCopy {
            path,
            deployment: deployment.to_owned(),
        }
    }

    /// The copied object, when there is a usable copy (a copy that is there but not usable is
    /// logged).
    pub fn get(&self) -> Option<Copied> {
        match self.read() {
            Ok(found) => found,
            Err(why) => {
                tracing::warn!("the copy {} is not used: {why}", self.path.display());
                None
            }
        }
    }

    /// The copied object when it is the one named `sha256`.
    pub fn get_named(&self, sha256: &str) -> Option<Copied> {
        self.get().filter(|copied| copied.sha256 == sha256)
    }

    fn read(&self) -> Result<Option<Copied>, String> {
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
        file.take(crate::bucket::store::MAX_OBJECT_BYTES + 4096)
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
        let body = bytes.split_off(newline + 1);
        if sha256_hex(&body) != header.sha256 {
            return Err("its bytes do not hash to the SHA-256 it names (damaged)".to_owned());
        }
        Ok(Some(Copied {
            body,
            sha256: header.sha256,
            etag: header.etag,
        }))
    }

    /// Keeps `body`, the object as the bucket holds it with `etag`. A copy that cannot be
    /// written costs the next run a whole read; it is logged, never an error.
    pub fn put(&self, etag: &str, body: &[u8]) {
        if etag.is_empty() {
            return;
        }
        let sha256 = sha256_hex(body);
        let header = Header {
            format: FORMAT.to_owned(),
            version: VERSION,
            deployment: self.deployment.clone(),
            sha256,
            etag: etag.to_owned(),
        };
        if let Err(error) = self.write(&header, body) {
            tracing::warn!(
                "could not keep a copy in {}: {error}; the next run reads the object whole",
                self.path.display()
            );
        }
    }

    fn write(&self, header: &Header, body: &[u8]) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(header).map_err(std::io::Error::other)?;
        line.push(b'\n');
        crate::private_file::write_atomically(&self.path, &[&line, body])
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
        let copy = ObjectCopy::beside(&lock, OWNERS_COPY, "s3://bucket/ssh/");
        let body = b"{\"SHA256:x\":{\"user\":\"bob\"}}\n";
        let sha = sha256_hex(body);
        assert_eq!(copy.get(), None);
        copy.put("\"etag-1\"", body);
        let path = dir.path().join(OWNERS_COPY);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let wanted = Copied {
            body: body.to_vec(),
            sha256: sha.clone(),
            etag: "\"etag-1\"".into(),
        };
        assert_eq!(copy.get_named(&sha), Some(wanted));
        // Another object asked for.
        assert_eq!(copy.get_named(&"0".repeat(64)), None);
        // Another deployment.
        let other = ObjectCopy::beside(&lock, OWNERS_COPY, "s3://other/ssh/");
        assert_eq!(other.get(), None);
        // Bytes that do not hash to the name: not used.
        let mut damaged = fs::read(&path).unwrap();
        let last = damaged.len() - 3;
        damaged[last] ^= 0x01;
        fs::write(&path, &damaged).unwrap();
        assert_eq!(copy.get(), None);
        // Readable by others: not used.
        copy.put("\"etag-1\"", body);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(copy.get(), None);
        // Without an ETag there is nothing to check a copy against: none is kept.
        fs::remove_file(&path).unwrap();
        copy.put("", body);
        assert!(!path.exists());
    }
}
