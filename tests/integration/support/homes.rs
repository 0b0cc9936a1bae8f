//! NFS-style homes for tests: a temp `homes.root` with per-user `~/.ssh/authorized_keys`, owned
//! and moded as sshd expects (the tests run as root, so any uid can own a file), and fresh keys
//! made with `ssh-keygen` so fingerprints are real.

use std::os::unix::fs::{PermissionsExt, chown, lchown};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Homes {
    root: tempfile::TempDir,
    keys: tempfile::TempDir,
}

/// A fresh key pair's public line and its `SHA256:` fingerprint.
#[derive(Debug, Clone)]
pub struct Key {
    pub line: String,
    pub fingerprint: String,
    /// The private key file, for logging in with it.
    pub private: PathBuf,
}

impl Homes {
    pub fn new() -> Homes {
        Homes {
            root: tempfile::tempdir().expect("temp dir for homes"),
            keys: tempfile::tempdir().expect("temp dir for keys"),
        }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `[homes]` settings for this root, with AD homes under `/home`.
    pub fn settings(&self) -> String {
        format!(
            "\n[homes]\nroot = \"{}\"\nhome_prefix = \"/home\"\nread_timeout = \"5s\"\nconcurrency = 4\n",
            self.root().display()
        )
    }

    /// A new ed25519 key (`kind` may be any `ssh-keygen -t`, e.g. "rsa -b 1024").
    pub fn key(&self, name: &str, kind: &str) -> Key {
        let private = self.keys.path().join(name);
        let mut command = Command::new("ssh-keygen");
        command
            .args(["-q", "-N", "", "-C", &format!("{name}@test"), "-f"])
            .arg(&private);
        command.arg("-t").args(kind.split_whitespace());
        let made = command.output().expect("running ssh-keygen");
        assert!(made.status.success(), "ssh-keygen -t {kind}: {made:?}");
        let public = PathBuf::from(format!("{}.pub", private.display()));
        let line = std::fs::read_to_string(&public)
            .unwrap()
            .trim_end()
            .to_owned();
        let listed = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&public)
            .output()
            .unwrap();
        let fingerprint = String::from_utf8(listed.stdout)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned();
        Key {
            line,
            fingerprint,
            private,
        }
    }

    /// The home of AD user `dir` (the last part of its unixHomeDirectory), owned by `uid`.
    pub fn home(&self, dir: &str) -> PathBuf {
        self.root().join(dir)
    }

    /// Writes `content` as `<dir>/.ssh/authorized_keys`: home 0755, .ssh 0700, file 0600, all
    /// owned by `uid`.
    pub fn write(&self, dir: &str, uid: u32, content: &str) -> PathBuf {
        let home = self.home(dir);
        let ssh = home.join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let file = ssh.join("authorized_keys");
        let _ = std::fs::remove_file(&file);
        std::fs::write(&file, content).unwrap();
        set(&home, uid, 0o755);
        set(&ssh, uid, 0o700);
        set(&file, uid, 0o600);
        file
    }
}

impl Homes {
    /// `<dir>/.ssh/authorized_keys`, whatever is there (or nothing).
    pub fn authorized_keys(&self, dir: &str) -> PathBuf {
        self.home(dir).join(".ssh/authorized_keys")
    }

    /// Replaces `<dir>/.ssh/authorized_keys` with a symlink to `target` (relative or absolute),
    /// owned by `uid` as the user's own `ln -s` would leave it.
    pub fn link_authorized_keys(&self, dir: &str, uid: u32, target: &Path) -> PathBuf {
        let link = self.authorized_keys(dir);
        remove_any(&link);
        std::os::unix::fs::symlink(target, &link).unwrap();
        lchown(&link, Some(uid), Some(uid)).unwrap();
        link
    }

    /// Replaces `<dir>/.ssh/authorized_keys` with a FIFO owned by `uid`, mode 0600: sound in
    /// every respect but its type. Nobody ever writes to it, so opening it blocking would hang.
    pub fn fifo_authorized_keys(&self, dir: &str, uid: u32) -> PathBuf {
        let fifo = self.authorized_keys(dir);
        remove_any(&fifo);
        let made = Command::new("mkfifo").arg(&fifo).output().unwrap();
        assert!(made.status.success(), "mkfifo: {made:?}");
        set(&fifo, uid, 0o600);
        fifo
    }

    /// Replaces `<dir>/.ssh/authorized_keys` with a directory owned by `uid`, mode 0700.
    pub fn dir_authorized_keys(&self, dir: &str, uid: u32) -> PathBuf {
        let path = self.authorized_keys(dir);
        remove_any(&path);
        std::fs::create_dir(&path).unwrap();
        set(&path, uid, 0o700);
        path
    }
}

/// Removes whatever is at `path` (file, symlink, FIFO or directory tree); nothing there is fine.
pub fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

impl Default for Homes {
    fn default() -> Homes {
        Homes::new()
    }
}

/// Owner and mode of `path` (not following a symlink for the owner).
pub fn set(path: &Path, uid: u32, mode: u32) {
    chown(path, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
