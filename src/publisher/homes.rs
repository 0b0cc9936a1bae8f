//! The homes stage: where each user's home is, and reading `~/.ssh/authorized_keys` from the NFS
//! homes as carefully as sshd's `StrictModes` would, with a bounded number of reads in flight and a
//! per-user timeout so a hung NFS server cannot hold the run.
//!
//! It owns the mapping from AD `unixHomeDirectory` to a path under `homes.root`, the ownership,
//! mode, type and size checks, and the outcome of each read ([`HarvestOutcome`]). It returns file
//! text only: parsing key lines belongs to `keys`. It must never read outside the mapped home (a
//! symlinked `authorized_keys` must resolve inside it), never block on a FIFO or device, never read
//! more than [`AUTHORIZED_KEYS_LIMIT`], and never turn a read error or timeout into "no keys": that
//! is [`HarvestOutcome::Unknown`], and the caller must leave that user's groups unchanged.
//!
//! Decisions where sshd or the spec leave room:
//! - The home directory may be owned by the user or by root and must not be group/world-writable,
//!   as sshd checks it. It is opened following symlinks: only whoever administers `homes.root` can
//!   put a symlink there, and every check below is made on what was actually opened.
//! - `.ssh` must be a real directory (not a symlink) owned by the user, not group/world-writable.
//! - `authorized_keys` may be a symlink only if it resolves inside the user's home; the target must
//!   pass the same checks as a plain file, and every directory between it and the home must be owned
//!   by the user or root and not group/world-writable (sshd's walk). Inside the home, because uids on
//!   this machine are not the AD uids: a link to `/home/someone/...` on the harvesting host could be
//!   owned by a local account that happens to share the uid.
//!   The link is resolved from the home's open descriptor, never by path (`openat2` with
//!   `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, checked against a component-by-component `O_NOFOLLOW`
//!   walk that also stands alone where `openat2` is missing), so swapping a directory on the way
//!   for a symlink mid-read cannot make keyhole read outside the home. An absolute link counts only
//!   when it names the home by its path on this machine.
//! - Whose uid must own the files: AD's `uidNumber` by default; with `[homes] owner = "nss"` the
//!   uid this host's name service gives the account ([`nss_uid`]), which is what NFS clients that
//!   map SIDs with SSSD or winbind see when the publisher is joined like them. A name the service
//!   does not know is a rejection; a name service that fails is `Unknown` (keys not changed).
//! - Invalid UTF-8 is replaced (U+FFFD), not rejected: a newline is never part of a multi-byte
//!   sequence, so only the offending line changes, and `keys` rejects it if it no longer parses. One
//!   odd byte in a comment must not cost a user all their keys.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::publisher::reader_pool;

/// The largest `authorized_keys` accepted, in bytes (SPEC: at most 1 MiB).
pub const AUTHORIZED_KEYS_LIMIT: u64 = 1024 * 1024;

/// Where the homes are on this machine, and which AD `unixHomeDirectory` prefix maps onto them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeLayout {
    /// Where the homes are mounted here (`homes.root`).
    pub root: PathBuf,
    /// The prefix of AD `unixHomeDirectory` values that `root` stands for (`homes.home_prefix`).
    pub home_prefix: PathBuf,
}

impl HomeLayout {
    /// The home of a user on this machine: `unixHomeDirectory` with `home_prefix` replaced by
    /// `root`, or `root/<sAMAccountName>` when AD has no `unixHomeDirectory`. Anything that could
    /// point outside `root` is rejected rather than cleaned up.
    pub fn home_of(
        &self,
        sam_account_name: &str,
        unix_home_directory: Option<&str>,
    ) -> Result<PathBuf, Rejection> {
        let Some(unix_home) = unix_home_directory else {
            let usable = !sam_account_name.is_empty()
                && sam_account_name != "."
                && sam_account_name != ".."
                && !sam_account_name.contains(['/', '\0']);
            if !usable {
                return Err(Rejection::UnusableAccountName {
                    sam_account_name: sam_account_name.to_owned(),
                });
            }
            return Ok(self.root.join(sam_account_name));
        };

        let path = Path::new(unix_home);
        if !path.is_absolute() || unix_home.contains('\0') {
            return Err(Rejection::HomeNotAbsolute {
                unix_home_directory: unix_home.to_owned(),
            });
        }
        // `components()` drops `.` and repeated slashes but keeps `..`, which is what matters.
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(Rejection::HomeHasParentComponent {
                unix_home_directory: unix_home.to_owned(),
            });
        }
        // Component-wise: "/homework/bob" is not under "/home".
        let inside =
            path.strip_prefix(&self.home_prefix)
                .map_err(|_| Rejection::HomeOutsidePrefix {
                    unix_home_directory: unix_home.to_owned(),
                    home_prefix: self.home_prefix.clone(),
                })?;
        if inside.as_os_str().is_empty() {
            // It would map onto `root` itself, i.e. everybody's homes.
            return Err(Rejection::HomeIsPrefix {
                unix_home_directory: unix_home.to_owned(),
            });
        }
        Ok(self.root.join(inside))
    }
}

/// One user whose keys are to be harvested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Harvestee {
    /// sAMAccountName; the key of the result map.
    pub user: String,
    /// AD `uidNumber`: the owner every checked file must have. Without it nothing can be trusted.
    pub uid: Option<u32>,
    /// From [`HomeLayout::home_of`]; a rejected home is reported without touching the disk.
    pub home: Result<PathBuf, Rejection>,
}

/// What reading one user's `authorized_keys` came to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum HarvestOutcome {
    /// The file's text, for `keys` to parse (invalid UTF-8 replaced, see the module doc).
    Keys(String),
    /// No home, no `.ssh`, or no `authorized_keys`: the user has no keys.
    NoKeys,
    /// Something is there but is not trusted; the user gets no keys and the reason is reported.
    Rejected(Rejection),
    /// A read error or timeout: nobody knows what the user's keys are. The caller must not change
    /// the groups of this user in this run.
    Unknown(String),
}

/// The settings of a harvest (`[homes]` in keyhole.toml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HarvestSettings {
    /// Reads in flight at once (at least 1). A read abandoned at its timeout stops counting; see
    /// [`harvest_with`] for what bounds those.
    pub concurrency: usize,
    /// How long one user's read may take before it is [`HarvestOutcome::Unknown`].
    pub read_timeout: Duration,
}

/// Which thing a check was about, for the reasons shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    Home,
    SshDir,
    AuthorizedKeys,
    /// The file a symlinked `authorized_keys` resolves to.
    LinkTarget(PathBuf),
    /// A directory between the home and the file a symlinked `authorized_keys` resolves to.
    LinkTargetDir(PathBuf),
}

impl Place {
    /// Directories on sshd's walk may also belong to root; `.ssh` and the file itself may not.
    fn root_may_own(&self) -> bool {
        matches!(self, Place::Home | Place::LinkTargetDir(_))
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Home => f.write_str("the home directory"),
            Place::SshDir => f.write_str(".ssh"),
            Place::AuthorizedKeys => f.write_str("authorized_keys"),
            Place::LinkTarget(path) => write!(f, "authorized_keys' target {}", path.display()),
            Place::LinkTargetDir(path) => write!(f, "directory {}", path.display()),
        }
    }
}

/// Why a user's keys were not trusted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    #[error("sAMAccountName {sam_account_name:?} cannot be used as a directory name")]
    UnusableAccountName { sam_account_name: String },
    #[error("unixHomeDirectory {unix_home_directory:?} is not an absolute path")]
    HomeNotAbsolute { unix_home_directory: String },
    #[error("unixHomeDirectory {unix_home_directory:?} has a `..` component")]
    HomeHasParentComponent { unix_home_directory: String },
    #[error(
        "unixHomeDirectory {unix_home_directory:?} is outside homes.home_prefix {}",
        home_prefix.display()
    )]
    HomeOutsidePrefix {
        unix_home_directory: String,
        home_prefix: PathBuf,
    },
    #[error("unixHomeDirectory {unix_home_directory:?} is homes.home_prefix itself, not a home")]
    HomeIsPrefix { unix_home_directory: String },
    #[error("the account has no uidNumber, so the owner of its files cannot be checked")]
    NoUidNumber,
    /// `[homes] owner = "nss"`: the publisher's name service has no such account.
    #[error(
        "the name service on this host knows no account {name:?} (homes.owner = \"nss\"), so the owner of its files cannot be checked"
    )]
    NoNssAccount { name: String },
    #[error("{place} is owned by uid {owner}, not {expected}{}", if place.root_may_own() { " or root" } else { "" })]
    WrongOwner {
        place: Place,
        owner: u32,
        expected: u32,
    },
    #[error("{place} is {} (mode {mode:04o})", writable_by(*mode))]
    Writable { place: Place, mode: u32 },
    #[error("{place} is {kind}, not a regular file")]
    NotARegularFile { place: Place, kind: &'static str },
    #[error("{place} is {kind}, not a directory")]
    NotADirectory { place: Place, kind: &'static str },
    #[error("{place} is a symbolic link, which is allowed only for authorized_keys itself")]
    Symlink { place: Place },
    #[error("{place} is a symbolic link loop")]
    SymlinkLoop { place: Place },
    #[error("authorized_keys is a symbolic link to {}, outside the home directory", target.display())]
    SymlinkOutsideHome { target: PathBuf },
    #[error("{place} is {size} bytes, more than the limit of {limit}")]
    TooLarge { place: Place, size: u64, limit: u64 },
}

fn writable_by(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "group- and world-writable",
        (true, false) => "group-writable",
        _ => "world-writable",
    }
}

fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_file() {
        "a regular file"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else {
        "of an unknown type"
    }
}

/// `[homes] owner = "nss"`: the uid this host's name service (`getpwnam`, so SSSD, winbind,
/// `/etc/passwd`, whatever nsswitch.conf says) gives `name`; `Ok(None)` when it knows no such
/// account. It may block on the network (SSSD, winbind): call it off the async threads.
pub fn nss_uid(name: &str) -> io::Result<Option<u32>> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the name"))?;
    let mut buffer = vec![0u8; 1024];
    loop {
        // SAFETY: `passwd` is plain old data that getpwnam_r fills in; all-zero is a valid value.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buffer.len()` is its real length; the
        // strings in `entry` point into `buffer`, which is not used after `pw_uid` is read.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr().cast::<libc::c_char>(),
                buffer.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Ok(None),
            0 => return Ok(Some(entry.pw_uid)),
            libc::ERANGE if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 4, 0),
            // getpwnam(3): these also mean "no such name" for some NSS modules.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            rc => return Err(io::Error::from_raw_os_error(rc)),
        }
    }
}

/// Reads every user's `authorized_keys` with [`read_authorized_keys`]; see [`harvest_with`].
pub async fn harvest(
    users: Vec<Harvestee>,
    settings: &HarvestSettings,
) -> BTreeMap<String, HarvestOutcome> {
    harvest_with(users, settings, read_authorized_keys).await
}

/// Reads every user's keys with `reader` (the seam tests use to simulate a hung NFS) on a pool of
/// `settings.concurrency` threads, each read given `read_timeout` (`reader_pool`).
///
/// Blocking filesystem calls cannot be cancelled, so a read that times out is abandoned: it is
/// reported as `Unknown`, its thread keeps running until the kernel gives up, and a new thread
/// takes its place so the rest of the homes keep moving. Abandoned threads that are still stuck
/// are counted; once there are twice `concurrency` of them, the homes are evidently hung and the
/// remaining users are reported `Unknown` without being read. So a run never holds more than three
/// times `concurrency` reader threads, and a fully hung NFS costs two or three `read_timeout`s, not
/// one per user. Abandoned threads that finish later stop counting, so a brief stall recovers.
///
/// The reader may return more than the outcome (`T`, e.g. [`Look`] with the identity of what it
/// read); what the harvest itself decides (a rejected home, a timeout) is a [`HarvestOutcome`]
/// turned into `T`.
pub async fn harvest_with<R, T>(
    users: Vec<Harvestee>,
    settings: &HarvestSettings,
    reader: R,
) -> BTreeMap<String, T>
where
    R: Fn(&Path, u32) -> T + Send + Sync + 'static,
    T: From<HarvestOutcome> + fmt::Debug + Send + 'static,
{
    let mut outcomes = BTreeMap::new();
    let mut jobs = Vec::with_capacity(users.len());
    for Harvestee { user, uid, home } in users {
        match (home, uid) {
            (Err(rejection), _) => {
                outcomes.insert(user, HarvestOutcome::Rejected(rejection).into());
            }
            (Ok(_), None) => {
                outcomes.insert(
                    user,
                    HarvestOutcome::Rejected(Rejection::NoUidNumber).into(),
                );
            }
            (Ok(home), Some(uid)) => jobs.push((user, home, uid)),
        }
    }
    let concurrency = settings.concurrency.max(1);
    let limits = reader_pool::Limits {
        concurrency,
        timeout: settings.read_timeout,
        stuck_limit: concurrency.saturating_mul(2),
    };
    let homes: Vec<(PathBuf, u32)> = jobs
        .iter()
        .map(|(_, home, uid)| (home.clone(), *uid))
        .collect();
    let finished = reader_pool::run("keyhole-homes", homes, limits, move |(home, uid)| {
        reader(home, *uid)
    })
    .await;
    for ((user, home, _), finished) in jobs.into_iter().zip(finished) {
        let outcome = match finished {
            reader_pool::Finished::Done(outcome) => outcome,
            reader_pool::Finished::TimedOut => HarvestOutcome::Unknown(format!(
                "reading the keys in {} timed out after {}",
                home.display(),
                humantime::format_duration(settings.read_timeout)
            ))
            .into(),
            reader_pool::Finished::Panicked => HarvestOutcome::Unknown(format!(
                "reading the keys in {} failed: the reader thread panicked",
                home.display()
            ))
            .into(),
            reader_pool::Finished::NotStarted {
                spawn_error: Some(error),
                ..
            } => HarvestOutcome::Unknown(format!(
                "could not start a thread to read {}: {error}",
                home.display()
            ))
            .into(),
            reader_pool::Finished::NotStarted { stuck, .. } => HarvestOutcome::Unknown(format!(
                "not read: {stuck} earlier reads of homes are hung, so no more are started"
            ))
            .into(),
        };
        tracing::trace!(user, ?outcome, "harvested");
        outcomes.insert(user, outcome);
    }
    outcomes
}

/// Reads `<home>/.ssh/authorized_keys` for the user with `uid`, synchronously, with sshd
/// `StrictModes`-grade checks made on the open file descriptors (not on paths, which could change
/// between a check and the open). See the module doc for the rules. May block for as long as the
/// filesystem does: call it through [`harvest`] to bound that.
pub fn read_authorized_keys(home: &Path, uid: u32) -> HarvestOutcome {
    match read_checked(home, uid, None) {
        Ok(Found::Text(text, _)) => HarvestOutcome::Keys(text),
        // Only a caller that remembers an identity can be told nothing changed; none was given.
        Ok(Found::Unchanged(_)) => {
            HarvestOutcome::Unknown(format!("{} was not read", home.display()))
        }
        Err(outcome) => outcome,
    }
}

/// What a home's `.ssh` and `authorized_keys` were when they were read: device, inode, owner,
/// mode, size, mtime and ctime of each (the home directory by device, inode, owner and mode
/// only: its times move with every file a user saves at the top of their home). Taken with
/// `fstat` on the descriptors the checks were made on, before the file was read, so a write that
/// lands during the read gives the next run another identity, never the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub home: DirStamp,
    pub ssh: Stamp,
    pub file: Stamp,
}

/// The home directory's part of an [`Identity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirStamp {
    pub dev: u64,
    pub ino: u64,
    pub uid: u32,
    pub mode: u32,
}

/// `.ssh`'s or `authorized_keys`' part of an [`Identity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub uid: u32,
    pub mode: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

/// A file whose ctime is this close to the run's start (or after it) may still be written to
/// within the same timestamp tick as the identity taken: its text is not remembered, and the
/// next run reads it again (git's "racily clean" entries). Generous against NFS servers whose
/// clock is a little off this host's.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

impl DirStamp {
    fn of(meta: &std::fs::Metadata) -> DirStamp {
        DirStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            uid: meta.uid(),
            mode: meta.mode(),
        }
    }
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            uid: meta.uid(),
            mode: meta.mode(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Changed within [`RACY_WINDOW`] of `now`, or after it.
    fn racy(&self, now: SystemTime) -> bool {
        let ctime = match u64::try_from(self.ctime.0) {
            Ok(seconds) => {
                let nanos = u32::try_from(self.ctime.1).unwrap_or(0);
                SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos.min(999_999_999))
            }
            // Before 1970: nobody's key file is that old; count it as racy, read it every run.
            Err(_) => return true,
        };
        ctime + RACY_WINDOW > now
    }
}

/// What looking at a home came to, for a caller that remembers what it read there last time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Look {
    /// Every check passed on what was opened, and the identity is the one remembered: the text
    /// read then is still the file's text. The file was not read.
    Unchanged(Identity),
    /// Read as [`read_authorized_keys`] reads (or found missing, rejected or unknown);
    /// `identity` is set when the text may be remembered: a plain `authorized_keys` (not a
    /// symlink) that is not [racy](RACY_WINDOW).
    Read {
        outcome: HarvestOutcome,
        identity: Option<Identity>,
    },
}

impl From<HarvestOutcome> for Look {
    fn from(outcome: HarvestOutcome) -> Look {
        Look::Read {
            outcome,
            identity: None,
        }
    }
}

/// [`read_authorized_keys`], except that the file is not read when every check passes and its
/// [`Identity`] is `previous`. Every check (StrictModes owner and mode of the home, `.ssh` and
/// the file, `O_NOFOLLOW` opens, the file's type and size) is made as on a full read, on what was
/// opened: an unchanged identity skips only the read of the text.
pub fn look_at_authorized_keys(
    home: &Path,
    uid: u32,
    previous: Option<&Identity>,
    now: SystemTime,
) -> Look {
    let since = Since { previous, now };
    match read_checked(home, uid, Some(&since)) {
        Ok(Found::Unchanged(identity)) => Look::Unchanged(identity),
        Ok(Found::Text(text, identity)) => Look::Read {
            outcome: HarvestOutcome::Keys(text),
            identity,
        },
        Err(outcome) => outcome.into(),
    }
}

/// What the caller remembers, and when the run started.
struct Since<'a> {
    previous: Option<&'a Identity>,
    now: SystemTime,
}

/// What a checked read found: the text (with the identity to remember it by, when it may be),
/// or that the identity is the one remembered (nothing was read).
enum Found {
    Text(String, Option<Identity>),
    Unchanged(Identity),
}

/// The checked read; every way it stops early is the outcome to report.
fn read_checked(home: &Path, uid: u32, since: Option<&Since<'_>>) -> Result<Found, HarvestOutcome> {
    let home_dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(home)
        .map_err(|error| match error.raw_os_error() {
            Some(libc::ELOOP) => {
                HarvestOutcome::Rejected(Rejection::SymlinkLoop { place: Place::Home })
            }
            _ => missing_or_unknown(&error, home),
        })?;
    let home_meta = check_directory(&home_dir, home, uid, Place::Home)?;

    let ssh_path = home.join(".ssh");
    let ssh_dir = open_at(
        &home_dir,
        ".ssh",
        libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
    )
    .map_err(|error| match error.raw_os_error() {
        // Which of the two an existing non-directory gives depends on the kernel; ask what it is.
        Some(libc::ELOOP | libc::ENOTDIR) => match std::fs::symlink_metadata(&ssh_path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                HarvestOutcome::Rejected(Rejection::Symlink {
                    place: Place::SshDir,
                })
            }
            Ok(meta) => HarvestOutcome::Rejected(Rejection::NotADirectory {
                place: Place::SshDir,
                kind: kind_of(meta.file_type()),
            }),
            Err(error) => missing_or_unknown(&error, &ssh_path),
        },
        _ => missing_or_unknown(&error, &ssh_path),
    })?;
    let ssh_meta = check_directory(&ssh_dir, &ssh_path, uid, Place::SshDir)?;

    let keys_path = ssh_path.join("authorized_keys");
    match open_at(
        &ssh_dir,
        "authorized_keys",
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
    ) {
        Ok(file) => {
            let meta = checked_file(&file, uid, Place::AuthorizedKeys, &keys_path)?;
            let Some(since) = since else {
                let text = read_text(file, &meta, Place::AuthorizedKeys, &keys_path)?;
                return Ok(Found::Text(text, None));
            };
            let identity = Identity {
                home: DirStamp::of(&home_meta),
                ssh: Stamp::of(&ssh_meta),
                file: Stamp::of(&meta),
            };
            if since.previous == Some(&identity) {
                return Ok(Found::Unchanged(identity));
            }
            let text = read_text(file, &meta, Place::AuthorizedKeys, &keys_path)?;
            let remembered = (!identity.file.racy(since.now)).then_some(identity);
            Ok(Found::Text(text, remembered))
        }
        // A symlinked authorized_keys is read on every run: its identity would have to cover
        // every directory of the walk and the target too.
        Err(error) if error.raw_os_error() == Some(libc::ELOOP) => {
            read_through_symlink(&home_dir, home, &ssh_dir, uid).map(|text| Found::Text(text, None))
        }
        Err(error) => Err(missing_or_unknown(&error, &keys_path)),
    }
}

/// A symlinked `authorized_keys`: allowed when it resolves inside the home, every directory on the
/// way there is sound, and the target itself passes the file checks.
///
/// The link is resolved from the home's open descriptor, never by path: a path checked and then
/// opened can be raced (swap a directory on the way for a symlink to `/` between the check and
/// the open, and the open reads outside the home). [`open_beneath`] walks the tree one component
/// at a time with `O_NOFOLLOW`, following each symlink itself and refusing any that leaves the
/// home; the file is then opened again with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
/// where the kernel has it, and both must be the same file. An absolute link is honoured only when
/// it names a place inside this home by the home's path on this machine.
fn read_through_symlink(
    home_dir: &File,
    home: &Path,
    ssh_dir: &File,
    uid: u32,
) -> Result<String, HarvestOutcome> {
    let link_path = home.join(".ssh/authorized_keys");
    let link = read_link_at(ssh_dir, "authorized_keys")
        .map_err(|error| missing_or_unknown(&error, &link_path))?;
    let beneath = if link.is_absolute() {
        match link.strip_prefix(home) {
            Ok(inside) if inside.as_os_str().is_empty() => {
                return Err(HarvestOutcome::Rejected(Rejection::SymlinkOutsideHome {
                    target: link,
                }));
            }
            Ok(inside) => inside.to_path_buf(),
            Err(_) => {
                return Err(HarvestOutcome::Rejected(Rejection::SymlinkOutsideHome {
                    target: link,
                }));
            }
        }
    } else {
        Path::new(".ssh").join(&link)
    };
    let opened = open_beneath(
        home_dir,
        &beneath,
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
    )
    .map_err(|error| match error.raw_os_error() {
        // Named as an operator would look for it: the link's text read from `.ssh`, `..`s folded.
        Some(libc::EXDEV) => HarvestOutcome::Rejected(Rejection::SymlinkOutsideHome {
            target: lexical(&home.join(".ssh").join(&link)),
        }),
        Some(libc::ELOOP) => HarvestOutcome::Rejected(Rejection::SymlinkLoop {
            place: Place::AuthorizedKeys,
        }),
        // A dangling link is a missing file, as for sshd.
        _ => missing_or_unknown(&error, &link_path),
    })?;
    // sshd's walk: every directory from the home down to the file, on what was opened.
    for (dir, file) in &opened.dirs {
        let path = home.join(dir);
        let meta = file.metadata().map_err(|error| unknown(&error, &path))?;
        check_ownership_and_mode(&meta, uid, Place::LinkTargetDir(path))?;
    }
    let target = home.join(&opened.path);
    read_file(opened.file, uid, Place::LinkTarget(target.clone()), &target)
}

/// `path` with `.` dropped and each `..` folding the component before it, without asking the
/// filesystem (which is what could be lying).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A file opened beneath a directory, with the directories on the way to it.
struct Beneath {
    file: File,
    /// The file's path relative to the directory it was opened beneath, symlinks resolved.
    path: PathBuf,
    /// Each directory between that directory and the file (relative path, open descriptor).
    dirs: Vec<(PathBuf, File)>,
}

/// How many symlinks one resolution may follow (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

/// Opens `path` beneath `root` (see [`read_through_symlink`]): `EXDEV` when it would leave
/// `root`, by `..` or by a symlink (an absolute one always), `ELOOP` past [`MAX_SYMLINKS`].
fn open_beneath(root: &File, path: &Path, flags: libc::c_int) -> io::Result<Beneath> {
    let walked = walk_beneath(root, path, flags)?;
    match openat2_beneath(root, path, flags) {
        // The kernel resolved it beneath `root` on its own; the walk must have found the same file,
        // or the tree changed in between and neither answer can be trusted.
        Ok(file) => {
            let (ours, kernels) = (walked.file.metadata()?, file.metadata()?);
            if (ours.dev(), ours.ino()) != (kernels.dev(), kernels.ino()) {
                return Err(io::Error::other(
                    "the directories changed while they were being read",
                ));
            }
            Ok(Beneath { file, ..walked })
        }
        // openat2 (Linux 5.6) is missing, or a seccomp filter refuses it: the walk alone is the
        // same guarantee, made one component at a time.
        Err(error) if matches!(error.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            Ok(walked)
        }
        Err(error) => Err(error),
    }
}

/// The component-by-component resolution: every name opened with `O_NOFOLLOW` relative to the
/// directory descriptor before it; a symlink is read with `readlinkat` and its target spliced
/// into what is left to resolve; `..` steps back to a directory already opened, never above
/// `root`.
fn walk_beneath(root: &File, path: &Path, flags: libc::c_int) -> io::Result<Beneath> {
    let mut pending = std::collections::VecDeque::new();
    push_components(&mut pending, path)?;
    let mut dirs: Vec<(PathBuf, File)> = Vec::new();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            if dirs.pop().is_none() {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
            continue;
        }
        let parent = dirs.last().map_or(root, |(_, dir)| dir);
        let parent_path = dirs
            .last()
            .map_or_else(PathBuf::new, |(dir, _)| dir.clone());
        let last = pending.is_empty();
        let open_flags = if last {
            flags | libc::O_NOFOLLOW
        } else {
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NONBLOCK
        };
        match open_at_os(parent, &name, open_flags) {
            Ok(file) if last => {
                return Ok(Beneath {
                    file,
                    path: parent_path.join(&name),
                    dirs,
                });
            }
            Ok(dir) => dirs.push((parent_path.join(&name), dir)),
            // A symlink, or (for a directory) possibly something else: only a readable link
            // is followed; anything else keeps the open's error.
            Err(error) if matches!(error.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                let Ok(target) = read_link_at_os(parent, &name) else {
                    return Err(error);
                };
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let rest = std::mem::take(&mut pending);
                push_components(&mut pending, &target)?;
                pending.extend(rest);
            }
            Err(error) => return Err(error),
        }
    }
    // The path ended in `..`: that names a directory, not a file.
    Err(io::Error::from_raw_os_error(libc::EISDIR))
}

/// Appends `path`'s components to `pending`; an absolute path leaves the root (`EXDEV`).
fn push_components(
    pending: &mut std::collections::VecDeque<std::ffi::OsString>,
    path: &Path,
) -> io::Result<()> {
    for component in path.components() {
        match component {
            Component::Normal(name) => pending.push_back(name.to_os_string()),
            Component::ParentDir => pending.push_back("..".into()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
        }
    }
    Ok(())
}

/// The kernel's `struct open_how` (linux/openat2.h); libc's is `non_exhaustive`, so it cannot be
/// built here. The size passed with it tells the kernel which version this is.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(root, path, flags, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: the kernel refuses
/// (`EXDEV`) any resolution that would leave `root`, however the tree changes meanwhile.
fn openat2_beneath(root: &File, path: &Path, flags: libc::c_int) -> io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let how = OpenHow {
        flags: u64::try_from(flags | libc::O_CLOEXEC).unwrap_or_default(),
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `root` is an open descriptor that outlives the call, `path` is NUL-terminated,
    // and `how` is a live `struct open_how` whose size is passed with it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: openat2 just returned this descriptor to us and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `readlinkat(2)` of `name` in an open directory.
fn read_link_at(dir: &File, name: &str) -> io::Result<PathBuf> {
    read_link_at_os(dir, std::ffi::OsStr::new(name))
}

fn read_link_at_os(dir: &File, name: &std::ffi::OsStr) -> io::Result<PathBuf> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let name = CString::new(name.as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let mut buffer = vec![0_u8; libc::PATH_MAX as usize];
    // SAFETY: `dir` is open, `name` is NUL-terminated, and `buffer` has the length passed.
    let length = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    let length = usize::try_from(length).map_err(|_| io::Error::last_os_error())?;
    buffer.truncate(length);
    Ok(PathBuf::from(std::ffi::OsString::from_vec(buffer)))
}

/// Checks an open file by its descriptor and reads at most [`AUTHORIZED_KEYS_LIMIT`] bytes.
fn read_file(file: File, uid: u32, place: Place, path: &Path) -> Result<String, HarvestOutcome> {
    let meta = checked_file(&file, uid, place.clone(), path)?;
    read_text(file, &meta, place, path)
}

/// The file checks, on the open descriptor: a regular file, owned by `uid`, not group- or
/// world-writable, at most [`AUTHORIZED_KEYS_LIMIT`] bytes. Returns what `fstat` said.
fn checked_file(
    file: &File,
    uid: u32,
    place: Place,
    path: &Path,
) -> Result<std::fs::Metadata, HarvestOutcome> {
    let meta = file.metadata().map_err(|error| unknown(&error, path))?;
    if !meta.file_type().is_file() {
        return Err(HarvestOutcome::Rejected(Rejection::NotARegularFile {
            place,
            kind: kind_of(meta.file_type()),
        }));
    }
    check_ownership_and_mode(&meta, uid, place.clone())?;
    if meta.size() > AUTHORIZED_KEYS_LIMIT {
        return Err(too_large(place, meta.size()));
    }
    Ok(meta)
}

/// Reads a checked file (`meta` is its `fstat`), at most [`AUTHORIZED_KEYS_LIMIT`] bytes.
fn read_text(
    file: File,
    meta: &std::fs::Metadata,
    place: Place,
    path: &Path,
) -> Result<String, HarvestOutcome> {
    // One byte past the limit tells a file that grew since the fstat from one that is exactly full.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.size()).unwrap_or(0));
    file.take(AUTHORIZED_KEYS_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| unknown(&error, path))?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > AUTHORIZED_KEYS_LIMIT {
        return Err(too_large(place, read.max(meta.size())));
    }
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    })
}

fn too_large(place: Place, size: u64) -> HarvestOutcome {
    HarvestOutcome::Rejected(Rejection::TooLarge {
        place,
        size,
        limit: AUTHORIZED_KEYS_LIMIT,
    })
}

fn check_directory(
    dir: &File,
    path: &Path,
    uid: u32,
    place: Place,
) -> Result<std::fs::Metadata, HarvestOutcome> {
    let meta = dir.metadata().map_err(|error| unknown(&error, path))?;
    check_ownership_and_mode(&meta, uid, place)?;
    Ok(meta)
}

fn check_ownership_and_mode(
    meta: &std::fs::Metadata,
    uid: u32,
    place: Place,
) -> Result<(), HarvestOutcome> {
    let owner = meta.uid();
    if owner != uid && !(owner == 0 && place.root_may_own()) {
        return Err(HarvestOutcome::Rejected(Rejection::WrongOwner {
            place,
            owner,
            expected: uid,
        }));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(HarvestOutcome::Rejected(Rejection::Writable {
            place,
            mode,
        }));
    }
    Ok(())
}

/// ENOENT / ENOTDIR mean "not there", which is "no keys"; anything else is not knowing.
fn missing_or_unknown(error: &io::Error, path: &Path) -> HarvestOutcome {
    match error.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR) => HarvestOutcome::NoKeys,
        _ => unknown(error, path),
    }
}

fn unknown(error: &io::Error, path: &Path) -> HarvestOutcome {
    HarvestOutcome::Unknown(format!("reading {}: {error}", path.display()))
}

/// `openat(2)` relative to an open directory, so the directory that was checked is the one the
/// name is looked up in. Always `O_CLOEXEC`.
fn open_at(dir: &File, name: &str, flags: libc::c_int) -> io::Result<File> {
    open_at_os(dir, std::ffi::OsStr::new(name), flags)
}

fn open_at_os(dir: &File, name: &std::ffi::OsStr, flags: libc::c_int) -> io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    let name = CString::new(name.as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    // SAFETY: `dir` is an open descriptor that outlives the call and `name` is NUL-terminated;
    // openat has no other preconditions.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor to us and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{PermissionsExt, chown, symlink};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    const UID: u32 = 1001;
    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl bob@laptop\n";

    /// A home owned by [`UID`] with a sound `.ssh` and `authorized_keys` holding [`KEY`].
    struct Fixture {
        _dir: tempfile::TempDir,
        home: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let home = dir.path().join("bob");
            std::fs::create_dir(&home).unwrap();
            set(&home, UID, 0o755);
            std::fs::create_dir(home.join(".ssh")).unwrap();
            set(&home.join(".ssh"), UID, 0o700);
            std::fs::write(home.join(".ssh/authorized_keys"), KEY).unwrap();
            set(&home.join(".ssh/authorized_keys"), UID, 0o600);
            Fixture { _dir: dir, home }
        }

        fn path(&self, relative: &str) -> PathBuf {
            self.home.join(relative)
        }

        fn read(&self) -> HarvestOutcome {
            read_authorized_keys(&self.home, UID)
        }

        /// Replaces authorized_keys with a symlink to `target`.
        fn link_keys_to(&self, target: &Path) {
            let link = self.path(".ssh/authorized_keys");
            std::fs::remove_file(&link).unwrap();
            symlink(target, &link).unwrap();
        }
    }

    fn set(path: &Path, uid: u32, mode: u32) {
        chown(path, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn rejection(outcome: HarvestOutcome) -> Rejection {
        match outcome {
            HarvestOutcome::Rejected(rejection) => rejection,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn a_sound_regular_file_gives_its_text() {
        assert_eq!(Fixture::new().read(), HarvestOutcome::Keys(KEY.to_owned()));
    }

    #[test]
    fn a_home_owned_by_root_is_accepted_as_sshd_does() {
        let fixture = Fixture::new();
        set(&fixture.home, 0, 0o755);
        assert_eq!(fixture.read(), HarvestOutcome::Keys(KEY.to_owned()));
    }

    #[test]
    fn a_file_owned_by_someone_else_is_rejected() {
        let fixture = Fixture::new();
        set(&fixture.path(".ssh/authorized_keys"), 0, 0o600);
        let rejection = rejection(fixture.read());
        assert_eq!(
            rejection.to_string(),
            "authorized_keys is owned by uid 0, not 1001"
        );
    }

    #[test]
    fn a_group_or_world_writable_file_is_rejected() {
        let fixture = Fixture::new();
        let keys = fixture.path(".ssh/authorized_keys");
        set(&keys, UID, 0o620);
        assert_eq!(
            rejection(fixture.read()),
            Rejection::Writable {
                place: Place::AuthorizedKeys,
                mode: 0o620
            }
        );
        set(&keys, UID, 0o602);
        assert_eq!(
            rejection(fixture.read()).to_string(),
            "authorized_keys is world-writable (mode 0602)"
        );
    }

    #[test]
    fn a_group_writable_ssh_dir_is_rejected() {
        let fixture = Fixture::new();
        set(&fixture.path(".ssh"), UID, 0o770);
        assert_eq!(
            rejection(fixture.read()).to_string(),
            ".ssh is group-writable (mode 0770)"
        );
    }

    #[test]
    fn an_ssh_dir_owned_by_someone_else_even_root_is_rejected() {
        let fixture = Fixture::new();
        set(&fixture.path(".ssh"), 1002, 0o700);
        assert_eq!(
            rejection(fixture.read()).to_string(),
            ".ssh is owned by uid 1002, not 1001"
        );
        set(&fixture.path(".ssh"), 0, 0o755);
        assert!(matches!(
            rejection(fixture.read()),
            Rejection::WrongOwner { owner: 0, .. }
        ));
    }

    #[test]
    fn a_world_writable_or_foreign_home_is_rejected() {
        let fixture = Fixture::new();
        set(&fixture.home, UID, 0o777);
        assert_eq!(
            rejection(fixture.read()).to_string(),
            "the home directory is group- and world-writable (mode 0777)"
        );
        set(&fixture.home, 1002, 0o755);
        assert_eq!(
            rejection(fixture.read()).to_string(),
            "the home directory is owned by uid 1002, not 1001 or root"
        );
    }

    #[test]
    fn an_ssh_symlink_is_rejected() {
        let fixture = Fixture::new();
        std::fs::rename(fixture.path(".ssh"), fixture.path("real-ssh")).unwrap();
        symlink("real-ssh", fixture.path(".ssh")).unwrap();
        assert_eq!(
            rejection(fixture.read()),
            Rejection::Symlink {
                place: Place::SshDir
            }
        );
    }

    #[test]
    fn an_ssh_that_is_a_file_is_rejected() {
        let fixture = Fixture::new();
        std::fs::remove_dir_all(fixture.path(".ssh")).unwrap();
        std::fs::write(fixture.path(".ssh"), "").unwrap();
        assert_eq!(
            rejection(fixture.read()).to_string(),
            ".ssh is a regular file, not a directory"
        );
    }

    #[test]
    fn a_symlink_to_a_file_of_root_outside_the_home_is_rejected() {
        let fixture = Fixture::new();
        fixture.link_keys_to(Path::new("/etc/passwd"));
        assert_eq!(
            rejection(fixture.read()),
            Rejection::SymlinkOutsideHome {
                target: PathBuf::from("/etc/passwd")
            }
        );
    }

    #[test]
    fn a_symlink_to_a_file_of_the_user_inside_the_home_is_followed() {
        let fixture = Fixture::new();
        std::fs::create_dir(fixture.path("dotfiles")).unwrap();
        set(&fixture.path("dotfiles"), UID, 0o755);
        std::fs::write(fixture.path("dotfiles/keys"), "from dotfiles\n").unwrap();
        set(&fixture.path("dotfiles/keys"), UID, 0o644);
        fixture.link_keys_to(Path::new("../dotfiles/keys"));
        assert_eq!(
            fixture.read(),
            HarvestOutcome::Keys("from dotfiles\n".to_owned())
        );
    }

    #[test]
    fn a_symlink_target_must_pass_the_file_checks_and_its_directories_too() {
        let fixture = Fixture::new();
        std::fs::create_dir(fixture.path("dotfiles")).unwrap();
        set(&fixture.path("dotfiles"), UID, 0o755);
        std::fs::write(fixture.path("dotfiles/keys"), KEY).unwrap();
        set(&fixture.path("dotfiles/keys"), 0, 0o644);
        fixture.link_keys_to(&fixture.path("dotfiles/keys"));
        let real_target = std::fs::canonicalize(fixture.path("dotfiles/keys")).unwrap();
        assert_eq!(
            rejection(fixture.read()),
            Rejection::WrongOwner {
                place: Place::LinkTarget(real_target.clone()),
                owner: 0,
                expected: UID
            }
        );

        set(&fixture.path("dotfiles/keys"), UID, 0o644);
        set(&fixture.path("dotfiles"), UID, 0o775);
        assert_eq!(
            rejection(fixture.read()),
            Rejection::Writable {
                place: Place::LinkTargetDir(real_target.parent().unwrap().to_path_buf()),
                mode: 0o775
            }
        );
    }

    /// The swap the security review described: `authorized_keys -> ../dotfiles/keys`, and while
    /// keyhole reads, another thread keeps exchanging `dotfiles` (a real directory) with a symlink
    /// to a directory outside the home holding a file the user owns. Whatever the interleaving,
    /// what is read is the file inside the home, or nothing.
    fn race_a_directory_swap(read: impl Fn(&Fixture) -> Option<String>) {
        use std::sync::atomic::AtomicBool;
        const INSIDE: &str = "inside the home\n";
        const OUTSIDE: &str = "OUTSIDE the home\n";
        let fixture = Fixture::new();
        let outside = fixture._dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        set(&outside, UID, 0o755);
        std::fs::write(outside.join("keys"), OUTSIDE).unwrap();
        set(&outside.join("keys"), UID, 0o600);
        std::fs::create_dir(fixture.path("dotfiles")).unwrap();
        set(&fixture.path("dotfiles"), UID, 0o755);
        std::fs::write(fixture.path("dotfiles/keys"), INSIDE).unwrap();
        set(&fixture.path("dotfiles/keys"), UID, 0o600);
        symlink(&outside, fixture.path("swap")).unwrap();
        fixture.link_keys_to(Path::new("../dotfiles/keys"));

        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let stop = Arc::clone(&stop);
            let dotfiles = CString::new(fixture.path("dotfiles").as_os_str().as_bytes()).unwrap();
            let swap = CString::new(fixture.path("swap").as_os_str().as_bytes()).unwrap();
            std::thread::spawn(move || {
                let mut swaps = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: both paths are NUL-terminated; RENAME_EXCHANGE swaps two names
                    // atomically.
                    let done = unsafe {
                        libc::renameat2(
                            libc::AT_FDCWD,
                            dotfiles.as_ptr(),
                            libc::AT_FDCWD,
                            swap.as_ptr(),
                            libc::RENAME_EXCHANGE,
                        )
                    };
                    // The fixture is gone once the reader has failed; stop then.
                    if done != 0 {
                        break;
                    }
                    swaps += 1;
                }
                swaps
            })
        };
        let started = Instant::now();
        let (mut reads, mut inside) = (0, 0);
        while reads < 20_000 && started.elapsed() < Duration::from_secs(3) {
            let text = read(&fixture);
            reads += 1;
            assert_ne!(
                text.as_deref(),
                Some(OUTSIDE),
                "read {reads} read a file outside the home"
            );
            if text.as_deref() == Some(INSIDE) {
                inside += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        // The race was run, and reads through the link still work when the tree holds still.
        assert!(swaps > 100 && reads > 100, "{swaps} swaps, {reads} reads");
        assert!(
            inside > 0,
            "none of {reads} reads got the file inside the home"
        );
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_mid_read_never_reads_outside_the_home() {
        race_a_directory_swap(|fixture| match fixture.read() {
            HarvestOutcome::Keys(text) => Some(text),
            _ => None,
        });
    }

    #[test]
    fn the_component_walk_alone_never_leaves_the_home_either() {
        // What runs where openat2 is missing (ENOSYS): the walk must hold by itself.
        race_a_directory_swap(|fixture| {
            let home = File::open(&fixture.home).ok()?;
            let walked = walk_beneath(
                &home,
                Path::new(".ssh/authorized_keys"),
                libc::O_RDONLY | libc::O_NONBLOCK,
            )
            .ok()?;
            let mut text = String::new();
            (&walked.file).read_to_string(&mut text).ok()?;
            Some(text)
        });
    }

    #[test]
    fn the_walk_refuses_what_openat2_refuses() {
        let fixture = Fixture::new();
        let home = File::open(&fixture.home).unwrap();
        let flags = libc::O_RDONLY | libc::O_NONBLOCK;
        let errno = |path: &str| {
            walk_beneath(&home, Path::new(path), flags)
                .err()
                .and_then(|error| error.raw_os_error())
        };
        assert_eq!(errno("../bob/.ssh/authorized_keys"), Some(libc::EXDEV));
        assert_eq!(errno(".ssh/../../x"), Some(libc::EXDEV));
        symlink("/etc", fixture.path("etc")).unwrap();
        assert_eq!(errno("etc/passwd"), Some(libc::EXDEV));
        symlink("loop", fixture.path("loop")).unwrap();
        assert_eq!(errno("loop"), Some(libc::ELOOP));
        assert_eq!(errno(".ssh/missing"), Some(libc::ENOENT));
        symlink(".ssh/./../.ssh/authorized_keys", fixture.path("keys")).unwrap();
        let walked = walk_beneath(&home, Path::new("keys"), flags).unwrap();
        assert_eq!(walked.path, Path::new(".ssh/authorized_keys"));
        assert_eq!(walked.dirs.len(), 1);
        // And openat2, where the kernel has it, agrees.
        match openat2_beneath(&home, Path::new("etc/passwd"), flags) {
            Err(error) if error.raw_os_error() == Some(libc::ENOSYS) => {}
            other => assert_eq!(
                other.err().and_then(|e| e.raw_os_error()),
                Some(libc::EXDEV)
            ),
        }
    }

    #[test]
    fn a_dangling_symlink_is_no_keys_and_a_loop_is_rejected() {
        let fixture = Fixture::new();
        fixture.link_keys_to(Path::new("nowhere"));
        assert_eq!(fixture.read(), HarvestOutcome::NoKeys);
        fixture.link_keys_to(Path::new("authorized_keys"));
        assert_eq!(
            rejection(fixture.read()),
            Rejection::SymlinkLoop {
                place: Place::AuthorizedKeys
            }
        );
    }

    #[test]
    fn a_fifo_is_rejected_without_blocking() {
        let fixture = Fixture::new();
        let keys = fixture.path(".ssh/authorized_keys");
        std::fs::remove_file(&keys).unwrap();
        let name = CString::new(keys.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        set(&keys, UID, 0o600);

        // On a thread, so that a regression fails the test instead of hanging it.
        let (sender, receiver) = mpsc::channel();
        let home = fixture.home.clone();
        std::thread::spawn(move || sender.send(read_authorized_keys(&home, UID)));
        let outcome = receiver.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            rejection(outcome).to_string(),
            "authorized_keys is a FIFO, not a regular file"
        );
    }

    #[test]
    fn a_directory_in_place_of_the_file_is_rejected() {
        let fixture = Fixture::new();
        let keys = fixture.path(".ssh/authorized_keys");
        std::fs::remove_file(&keys).unwrap();
        std::fs::create_dir(&keys).unwrap();
        set(&keys, UID, 0o700);
        assert_eq!(
            rejection(fixture.read()),
            Rejection::NotARegularFile {
                place: Place::AuthorizedKeys,
                kind: "a directory"
            }
        );
    }

    #[test]
    fn a_file_over_one_mib_is_rejected_and_one_of_exactly_one_mib_is_read() {
        let fixture = Fixture::new();
        let keys = fixture.path(".ssh/authorized_keys");
        std::fs::write(&keys, vec![b'#'; 5 * 1024 * 1024]).unwrap();
        assert_eq!(
            rejection(fixture.read()),
            Rejection::TooLarge {
                place: Place::AuthorizedKeys,
                size: 5 * 1024 * 1024,
                limit: AUTHORIZED_KEYS_LIMIT
            }
        );
        std::fs::write(&keys, vec![b'#'; 1024 * 1024]).unwrap();
        match fixture.read() {
            HarvestOutcome::Keys(text) => assert_eq!(text.len(), 1024 * 1024),
            other => panic!("expected keys, got {other:?}"),
        }
    }

    #[test]
    fn missing_home_ssh_or_file_is_no_keys() {
        let fixture = Fixture::new();
        std::fs::remove_file(fixture.path(".ssh/authorized_keys")).unwrap();
        assert_eq!(fixture.read(), HarvestOutcome::NoKeys);
        std::fs::remove_dir(fixture.path(".ssh")).unwrap();
        assert_eq!(fixture.read(), HarvestOutcome::NoKeys);
        assert_eq!(
            read_authorized_keys(&fixture.path("no-such-home"), UID),
            HarvestOutcome::NoKeys
        );
        // A home that is a plain file (ENOTDIR) has no keys either.
        std::fs::write(fixture.path("a-file"), "").unwrap();
        assert_eq!(
            read_authorized_keys(&fixture.path("a-file"), UID),
            HarvestOutcome::NoKeys
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_and_other_lines_survive() {
        let fixture = Fixture::new();
        let mut bytes = b"ssh-ed25519 AAAA caf\xe9\n".to_vec();
        bytes.extend_from_slice(KEY.as_bytes());
        std::fs::write(fixture.path(".ssh/authorized_keys"), bytes).unwrap();
        assert_eq!(
            fixture.read(),
            HarvestOutcome::Keys(format!("ssh-ed25519 AAAA caf\u{fffd}\n{KEY}"))
        );
    }

    #[test]
    fn only_missing_means_no_keys_and_other_errors_are_unknown() {
        let path = Path::new("/nfs/home/bob");
        for errno in [libc::ENOENT, libc::ENOTDIR] {
            assert_eq!(
                missing_or_unknown(&io::Error::from_raw_os_error(errno), path),
                HarvestOutcome::NoKeys
            );
        }
        for errno in [libc::EIO, libc::EACCES, libc::ESTALE] {
            assert!(matches!(
                missing_or_unknown(&io::Error::from_raw_os_error(errno), path),
                HarvestOutcome::Unknown(message) if message.starts_with("reading /nfs/home/bob: ")
            ));
        }
    }

    fn layout() -> HomeLayout {
        HomeLayout {
            root: PathBuf::from("/nfs/home"),
            home_prefix: PathBuf::from("/home"),
        }
    }

    #[test]
    fn unix_home_directory_maps_from_the_prefix_onto_the_root() {
        assert_eq!(
            layout().home_of("bob", Some("/home/bob")),
            Ok(PathBuf::from("/nfs/home/bob"))
        );
        assert_eq!(
            layout().home_of("bob", Some("/home//staff/./bob/")),
            Ok(PathBuf::from("/nfs/home/staff/bob"))
        );
        assert_eq!(
            layout().home_of("bob", None),
            Ok(PathBuf::from("/nfs/home/bob"))
        );
    }

    #[test]
    fn a_home_that_could_leave_the_root_is_rejected() {
        let layout = layout();
        assert!(matches!(
            layout.home_of("bob", Some("/home/../etc")),
            Err(Rejection::HomeHasParentComponent { .. })
        ));
        assert!(matches!(
            layout.home_of("bob", Some("/home/bob/../../root")),
            Err(Rejection::HomeHasParentComponent { .. })
        ));
        assert_eq!(
            layout
                .home_of("bob", Some("/srv/bob"))
                .unwrap_err()
                .to_string(),
            "unixHomeDirectory \"/srv/bob\" is outside homes.home_prefix /home"
        );
        assert!(matches!(
            layout.home_of("bob", Some("/homework/bob")),
            Err(Rejection::HomeOutsidePrefix { .. })
        ));
        assert!(matches!(
            layout.home_of("bob", Some("/home/")),
            Err(Rejection::HomeIsPrefix { .. })
        ));
        assert!(matches!(
            layout.home_of("bob", Some("home/bob")),
            Err(Rejection::HomeNotAbsolute { .. })
        ));
        for name in ["", ".", "..", "a/b"] {
            assert!(matches!(
                layout.home_of(name, None),
                Err(Rejection::UnusableAccountName { .. })
            ));
        }
    }

    #[test]
    fn outcomes_serialize_with_their_reason() {
        let outcome = HarvestOutcome::Rejected(Rejection::WrongOwner {
            place: Place::AuthorizedKeys,
            owner: 0,
            expected: UID,
        });
        assert_eq!(
            serde_json::to_value(&outcome).unwrap(),
            serde_json::json!({
                "outcome": "rejected",
                "detail": {"reason": "wrong_owner", "place": "authorized_keys", "owner": 0, "expected": 1001}
            })
        );
    }

    // --- harvest: concurrency and timeouts, with injected readers -------------------------------

    /// Holds hung readers until the test is done with them.
    #[derive(Clone, Default)]
    struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>);

    impl Gate {
        fn wait(&self) {
            let (open, changed) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = changed.wait(open).unwrap();
            }
        }

        fn open(&self) {
            let (open, changed) = &*self.0;
            *open.lock().unwrap() = true;
            changed.notify_all();
        }
    }

    fn users(names: &[&str]) -> Vec<Harvestee> {
        names
            .iter()
            .map(|name| Harvestee {
                user: (*name).to_owned(),
                uid: Some(UID),
                home: Ok(PathBuf::from("/nfs/home").join(name)),
            })
            .collect()
    }

    /// Fails a test whose harvest waits on a hung read instead of letting it hang the suite.
    async fn within_5s<T>(harvest: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), harvest)
            .await
            .expect("the harvest waited for a hung read")
    }

    fn keys_of(home: &Path) -> HarvestOutcome {
        HarvestOutcome::Keys(format!("keys of {}", home.display()))
    }

    #[tokio::test]
    async fn a_hung_read_is_unknown_after_its_timeout_and_the_others_are_harvested() {
        let gate = Gate::default();
        let hung = gate.clone();
        let settings = HarvestSettings {
            concurrency: 1,
            read_timeout: Duration::from_millis(200),
        };
        let outcomes = within_5s(harvest_with(
            users(&["bob", "carol", "dave", "erin"]),
            &settings,
            move |home: &Path, _uid| {
                if home.ends_with("bob") {
                    hung.wait();
                }
                keys_of(home)
            },
        ))
        .await;
        gate.open();

        assert!(
            matches!(&outcomes["bob"], HarvestOutcome::Unknown(message) if message.contains("timed out after 200ms")),
            "{:?}",
            outcomes["bob"]
        );
        for user in ["carol", "dave", "erin"] {
            assert_eq!(outcomes[user], keys_of(&Path::new("/nfs/home").join(user)));
        }
        // With concurrency 1, the others could only be harvested because the hung read (held until
        // the harvest returned) gave up its permit: no wall clock needed to see it.
    }

    #[tokio::test]
    async fn when_reads_keep_hanging_the_rest_are_unknown_without_being_read() {
        let gate = Gate::default();
        let hung = gate.clone();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let settings = HarvestSettings {
            concurrency: 2,
            read_timeout: Duration::from_millis(100),
        };
        let names: Vec<String> = (0..20).map(|n| format!("user{n}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let outcomes = within_5s(harvest_with(
            users(&names),
            &settings,
            move |home: &Path, _uid| {
                counted.fetch_add(1, Ordering::SeqCst);
                hung.wait();
                keys_of(home)
            },
        ))
        .await;
        gate.open();

        assert_eq!(outcomes.len(), 20);
        assert!(
            outcomes
                .values()
                .all(|outcome| matches!(outcome, HarvestOutcome::Unknown(_)))
        );
        let calls = calls.load(Ordering::SeqCst);
        // Twice the concurrency are abandoned before giving up; a race at a wave's end may add one.
        // (The other reads were never started: that, not how long it took, is the promise.)
        assert!((4..=6).contains(&calls), "{calls} reads were started");
    }

    #[tokio::test]
    async fn a_read_that_finishes_late_no_longer_counts_as_hung() {
        let gate = Gate::default();
        let hung = gate.clone();
        let settings = HarvestSettings {
            concurrency: 1,
            read_timeout: Duration::from_millis(200),
        };
        // bob overruns his timeout but finishes 150ms before carol's hung read is abandoned, so
        // only one read is hung when dave's turn comes, below the limit of two.
        let outcomes = within_5s(harvest_with(
            users(&["bob", "carol", "dave"]),
            &settings,
            move |home: &Path, _uid| {
                if home.ends_with("bob") {
                    std::thread::sleep(Duration::from_millis(250));
                } else if home.ends_with("carol") {
                    hung.wait();
                }
                keys_of(home)
            },
        ))
        .await;
        gate.open();

        assert!(matches!(outcomes["bob"], HarvestOutcome::Unknown(_)));
        assert!(matches!(outcomes["carol"], HarvestOutcome::Unknown(_)));
        assert_eq!(outcomes["dave"], keys_of(Path::new("/nfs/home/dave")));
    }

    #[tokio::test]
    async fn no_more_than_concurrency_reads_are_in_flight() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (current, peak) = (Arc::clone(&in_flight), Arc::clone(&most));
        let settings = HarvestSettings {
            concurrency: 3,
            read_timeout: Duration::from_secs(10),
        };
        let names: Vec<String> = (0..15).map(|n| format!("user{n}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let outcomes = within_5s(harvest_with(
            users(&names),
            &settings,
            move |home: &Path, _uid| {
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(40));
                current.fetch_sub(1, Ordering::SeqCst);
                keys_of(home)
            },
        ))
        .await;

        assert_eq!(outcomes.len(), 15);
        assert!(
            outcomes
                .values()
                .all(|outcome| matches!(outcome, HarvestOutcome::Keys(_)))
        );
        let most = most.load(Ordering::SeqCst);
        assert!(most <= 3, "{most} reads were in flight");
        // Not serialised either: the bound is a bound, not a queue of one.
        assert!(most >= 2, "only {most} read was in flight at a time");
    }

    #[tokio::test]
    async fn users_without_a_usable_home_or_uid_are_rejected_without_reading() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let settings = HarvestSettings {
            concurrency: 4,
            read_timeout: Duration::from_secs(5),
        };
        let rejected_home = Rejection::HomeOutsidePrefix {
            unix_home_directory: "/srv/mallory".to_owned(),
            home_prefix: PathBuf::from("/home"),
        };
        let harvestees = vec![
            Harvestee {
                user: "mallory".to_owned(),
                uid: Some(UID),
                home: Err(rejected_home.clone()),
            },
            Harvestee {
                user: "nouid".to_owned(),
                uid: None,
                home: Ok(PathBuf::from("/nfs/home/nouid")),
            },
        ];
        let outcomes = within_5s(harvest_with(
            harvestees,
            &settings,
            move |home: &Path, _uid| {
                counted.fetch_add(1, Ordering::SeqCst);
                keys_of(home)
            },
        ))
        .await;

        assert_eq!(outcomes["mallory"], HarvestOutcome::Rejected(rejected_home));
        assert_eq!(
            outcomes["nouid"],
            HarvestOutcome::Rejected(Rejection::NoUidNumber)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_panicking_reader_is_unknown_not_a_crash() {
        let settings = HarvestSettings {
            concurrency: 2,
            read_timeout: Duration::from_secs(5),
        };
        let outcomes = within_5s(harvest_with(
            users(&["bob", "carol"]),
            &settings,
            |home: &Path, _uid| {
                if home.ends_with("bob") {
                    panic!("reader bug");
                }
                keys_of(home)
            },
        ))
        .await;
        assert!(
            matches!(&outcomes["bob"], HarvestOutcome::Unknown(message) if message.contains("panicked"))
        );
        assert_eq!(outcomes["carol"], keys_of(Path::new("/nfs/home/carol")));
    }

    #[tokio::test]
    async fn harvest_reads_real_homes() {
        let fixture = Fixture::new();
        let settings = HarvestSettings {
            concurrency: 4,
            read_timeout: Duration::from_secs(5),
        };
        let harvestees = vec![
            Harvestee {
                user: "bob".to_owned(),
                uid: Some(UID),
                home: Ok(fixture.home.clone()),
            },
            Harvestee {
                user: "carol".to_owned(),
                uid: Some(1002),
                home: Ok(fixture.path("../carol")),
            },
            Harvestee {
                user: "eve".to_owned(),
                uid: Some(1003),
                home: Ok(fixture.home.clone()),
            },
        ];
        let outcomes = within_5s(harvest(harvestees, &settings)).await;
        assert_eq!(outcomes["bob"], HarvestOutcome::Keys(KEY.to_owned()));
        assert_eq!(outcomes["carol"], HarvestOutcome::NoKeys);
        assert!(matches!(
            outcomes["eve"],
            HarvestOutcome::Rejected(Rejection::WrongOwner { .. })
        ));
    }
}
