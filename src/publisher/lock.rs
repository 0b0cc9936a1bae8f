//! The publisher's lock file: keeps two publishes on one host apart (exit 75), so a slow run and
//! the next timer tick never interleave their writes. Publishers on other hosts are caught by the
//! conditional write of the index instead (see `store`).
//!
//! The lock is an advisory `flock` held for the life of [`PublishLock`]; the kernel drops it when
//! the process dies, so a crashed run never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::exit::{Exit, coded};

/// Held while publishing; released on drop.
#[derive(Debug)]
pub struct PublishLock {
    _file: File,
}

impl PublishLock {
    /// Takes the lock at `path` without waiting: another holder means exit 75.
    pub fn acquire(path: &Path) -> anyhow::Result<PublishLock> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| {
                anyhow::Error::new(error)
                    .context(format!("creating the lock directory {}", parent.display()))
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|error| {
                anyhow::Error::new(error)
                    .context(format!("opening the lock file {}", path.display()))
            })?;
        match file.try_lock() {
            Ok(()) => Ok(PublishLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(coded(
                Exit::Busy,
                anyhow::anyhow!("another keyhole publish holds the lock {}", path.display()),
            )),
            Err(TryLockError::Error(error)) => {
                Err(anyhow::Error::new(error).context(format!("locking {}", path.display())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_told_to_wait_and_the_lock_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/publish.lock");
        let first = PublishLock::acquire(&path).unwrap();
        let second = PublishLock::acquire(&path).unwrap_err();
        assert_eq!(Exit::for_error(&second), Exit::Busy);
        drop(first);
        PublishLock::acquire(&path).unwrap();
    }
}
