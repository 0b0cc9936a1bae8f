//! Reading the policy file as it was at a git revision, straight from the object database with
//! git2: no checkout, no index, no working-tree change, so it works in a CI job's clone and leaves
//! the job's checkout alone.
//!
//! This module only reads. It never fetches (there is no network transport compiled in), never
//! writes a ref, an object or a file. When a revision is not in the clone it says so, with the
//! `git fetch` command that would bring it, because in CI that is almost always a shallow clone.

use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

/// A git problem, with what the operator can do about it in the message.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("no git repository at or above {}", dir.display())]
    NoRepository {
        dir: PathBuf,
        #[source]
        source: git2::Error,
    },
    /// The revision does not name a commit that this clone has.
    #[error("{role} revision {rev} is not in this clone{shallow}{hint}", shallow = if *.shallow { " (a shallow clone)" } else { "" }, hint = fetch_hint(.fetch.as_deref()))]
    RevisionNotFound {
        role: &'static str,
        rev: String,
        shallow: bool,
        /// A `git fetch` command that would bring the revision, when one can be guessed.
        fetch: Option<String>,
        /// Not a `#[source]`: libgit2's "revspec not found" adds nothing to the message, and
        /// the fetch hint should be the last thing the reader sees.
        cause: git2::Error,
    },
    #[error("{role} revision {rev}: {message}")]
    Revision {
        role: &'static str,
        rev: String,
        message: String,
        #[source]
        source: Option<git2::Error>,
    },
    #[error("{} at {rev} is {what}, not a regular file", path.display())]
    NotAFile {
        rev: String,
        path: PathBuf,
        what: &'static str,
    },
    #[error("the policy path {} is outside the repository at {}", path.display(), root.display())]
    OutsideRepository { path: PathBuf, root: PathBuf },
    #[error("the repository at {} is bare: there is no working tree; give --head REV", .0.display())]
    Bare(PathBuf),
    #[error("reading {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn fetch_hint(fetch: Option<&str>) -> String {
    match fetch {
        Some(command) => format!("; fetch it with `{command}`"),
        None => String::new(),
    }
}

/// The policy file's content at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionFile {
    /// The full id of the commit the revision resolved to.
    pub commit: String,
    /// `None` when the file does not exist in that commit.
    pub bytes: Option<Vec<u8>>,
}

/// A repository opened for reading.
pub struct Repo {
    repo: git2::Repository,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("path", &self.repo.path())
            .finish()
    }
}

impl Repo {
    /// Finds the repository that contains `dir`, looking upwards as `git` does.
    pub fn discover(dir: &Path) -> Result<Repo, GitError> {
        git2::Repository::discover(dir)
            .map(|repo| Repo { repo })
            .map_err(|source| GitError::NoRepository {
                dir: dir.to_path_buf(),
                source,
            })
    }

    /// The root of the working tree, or `None` for a bare repository.
    pub fn workdir(&self) -> Option<&Path> {
        self.repo.workdir()
    }

    pub fn is_shallow(&self) -> bool {
        self.repo.is_shallow()
    }

    /// The file at `path` (relative to the repository root, `/`-separated) in the commit `rev`
    /// names. `role` ("base", "head") only words the errors.
    pub fn file_at(
        &self,
        role: &'static str,
        rev: &str,
        path: &Path,
    ) -> Result<RevisionFile, GitError> {
        let object = self.repo.revparse_single(rev).map_err(|source| {
            if source.code() == git2::ErrorCode::NotFound {
                GitError::RevisionNotFound {
                    role,
                    rev: rev.to_owned(),
                    shallow: self.repo.is_shallow(),
                    fetch: self.fetch_command(rev),
                    cause: source,
                }
            } else {
                GitError::Revision {
                    role,
                    rev: rev.to_owned(),
                    message: source.message().to_owned(),
                    source: Some(source),
                }
            }
        })?;
        let revision_error = |message: &str, source: git2::Error| GitError::Revision {
            role,
            rev: rev.to_owned(),
            message: format!("{message}: {}", source.message()),
            source: Some(source),
        };
        let commit = object
            .peel_to_commit()
            .map_err(|source| revision_error("does not name a commit", source))?;
        let tree = commit
            .tree()
            .map_err(|source| revision_error("its tree is not in this clone", source))?;
        let entry = match tree.get_path(path) {
            Ok(entry) => entry,
            Err(error) if error.code() == git2::ErrorCode::NotFound => {
                return Ok(RevisionFile {
                    commit: commit.id().to_string(),
                    bytes: None,
                });
            }
            Err(source) => return Err(revision_error("reading its tree", source)),
        };
        let what = match (entry.kind(), entry.filemode()) {
            (Some(git2::ObjectType::Blob), mode) if mode == i32::from(git2::FileMode::Link) => {
                Some("a symbolic link")
            }
            (Some(git2::ObjectType::Blob), _) => None,
            (Some(git2::ObjectType::Tree), _) => Some("a directory"),
            (Some(git2::ObjectType::Commit), _) => Some("a submodule"),
            _ => Some("not a file"),
        };
        if let Some(what) = what {
            return Err(GitError::NotAFile {
                rev: rev.to_owned(),
                path: path.to_path_buf(),
                what,
            });
        }
        let blob = self.repo.find_blob(entry.id()).map_err(|source| {
            // A partial clone (`--filter=blob:none`) has the tree but not the blob.
            revision_error(
                &format!("the content of {} is not in this clone", path.display()),
                source,
            )
        })?;
        Ok(RevisionFile {
            commit: commit.id().to_string(),
            bytes: Some(blob.content().to_vec()),
        })
    }

    /// The command that would bring `rev` into this clone: `origin/main` is branch `main` of the
    /// remote `origin`, fetched with an explicit refspec because a single-branch clone's
    /// configured refspec would leave `origin/main` unset; a commit id is fetched as it is;
    /// anything else (a branch or tag name) is fetched to the same name here. `--depth=1` keeps a
    /// shallow clone shallow, which is all a two-revision diff needs.
    fn fetch_command(&self, rev: &str) -> Option<String> {
        let names = self.repo.remotes().ok()?;
        let remotes: Vec<String> = (0..names.len())
            .filter_map(|i| names.get(i).ok().flatten())
            .map(str::to_owned)
            .collect();
        let rev = rev.strip_prefix("refs/remotes/").unwrap_or(rev);
        for remote in &remotes {
            if let Some(branch) = rev.strip_prefix(&format!("{remote}/"))
                && !branch.is_empty()
            {
                return Some(format!(
                    "git fetch --depth=1 {remote} {branch}:refs/remotes/{remote}/{branch}"
                ));
            }
        }
        let remote = remotes
            .iter()
            .find(|r| r.as_str() == "origin")
            .or(remotes.first())?;
        if rev.len() >= 7 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some(format!("git fetch --depth=1 {remote} {rev}"))
        } else {
            Some(format!("git fetch --depth=1 {remote} {rev}:{rev}"))
        }
    }

    /// Where `policy` (as given on the command line) is inside the repository, `/`-separated
    /// from the root. The rule is git's own for `git show REV:PATH`: a path starting with `./` or
    /// `../` is relative to `cwd`, any other relative path to the repository root; an absolute
    /// path must lie inside the working tree.
    pub fn path_in_repo(&self, policy: &Path, cwd: &Path) -> Result<PathBuf, GitError> {
        let cwd_relative = matches!(
            policy.components().next(),
            Some(Component::CurDir | Component::ParentDir)
        );
        if !policy.is_absolute() && !cwd_relative {
            let normal = normalize(policy);
            if normal
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
                || normal.as_os_str().is_empty()
            {
                return Err(GitError::OutsideRepository {
                    path: policy.to_path_buf(),
                    root: self.root_for_messages(),
                });
            }
            return Ok(normal);
        }
        let root = self
            .workdir()
            .ok_or_else(|| GitError::Bare(self.repo.path().to_path_buf()))?;
        // Both sides canonical, so a symlinked temp dir or `--repo` spelling does not matter; the
        // file itself may not exist (deleted in the working tree), so only its directory is
        // canonicalized.
        let root = canonical(root)?;
        let absolute = normalize(&canonical(cwd)?.join(policy));
        let inside = absolute
            .strip_prefix(&root)
            .ok()
            .filter(|relative| !relative.as_os_str().is_empty());
        match inside {
            Some(relative) => Ok(relative.to_path_buf()),
            None => Err(GitError::OutsideRepository {
                path: policy.to_path_buf(),
                root,
            }),
        }
    }

    fn root_for_messages(&self) -> PathBuf {
        self.workdir()
            .unwrap_or_else(|| self.repo.path())
            .to_path_buf()
    }

    /// The file at `path` in the working tree, as it is on disk now; `None` when it is not there.
    ///
    /// Read as git would store it: a symbolic link, at the file or at any directory on the way
    /// to it inside the repository, is refused, never followed. A pull request can make
    /// `access-groups.toml` a link to `/etc/shadow` or to a CI secret, and `diff` quotes lines of
    /// the policy in its report (which is posted as a comment). A FIFO or device is refused
    /// without blocking.
    pub fn working_tree_file(&self, path: &Path) -> Result<Option<Vec<u8>>, GitError> {
        let root = self
            .workdir()
            .ok_or_else(|| GitError::Bare(self.repo.path().to_path_buf()))?;
        let full = root.join(path);
        let not_a_file = |what| GitError::NotAFile {
            rev: "the working tree".to_owned(),
            path: path.to_path_buf(),
            what,
        };
        let file = match open_without_symlinks(root, path) {
            Ok(file) => file,
            Err(error) => {
                // Which errno a symlink on the way gives depends on where it is and on the
                // kernel; ask the tree what is there.
                let mut prefix = root.to_path_buf();
                for component in path.components() {
                    prefix.push(component);
                    if std::fs::symlink_metadata(&prefix)
                        .is_ok_and(|meta| meta.file_type().is_symlink())
                    {
                        return Err(not_a_file("a symbolic link (or inside one)"));
                    }
                }
                return match error.raw_os_error() {
                    Some(libc::ENOENT | libc::ENOTDIR) => Ok(None),
                    _ => Err(GitError::Io {
                        path: full,
                        source: error,
                    }),
                };
            }
        };
        let meta = file.metadata().map_err(|source| GitError::Io {
            path: full.clone(),
            source,
        })?;
        if meta.is_dir() {
            return Err(not_a_file("a directory"));
        }
        if !meta.is_file() {
            return Err(not_a_file("a special file"));
        }
        let mut bytes = Vec::new();
        (&file)
            .read_to_end(&mut bytes)
            .map_err(|source| GitError::Io { path: full, source })?;
        Ok(Some(bytes))
    }
}

/// Opens `path` below `root` one component at a time with `O_NOFOLLOW`, so no symlink inside the
/// repository is followed (the root itself may be reached through one).
fn open_without_symlinks(root: &Path, path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let mut current = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(root)?;
    let names: Vec<&std::ffi::OsStr> = path
        .components()
        .map(|component| match component {
            Component::Normal(name) => Ok(name),
            _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        })
        .collect::<Result<_, _>>()?;
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let flags = libc::O_RDONLY
            | libc::O_NOFOLLOW
            | libc::O_CLOEXEC
            | libc::O_NONBLOCK
            | if last {
                libc::O_NOCTTY
            } else {
                libc::O_DIRECTORY
            };
        let name = std::ffi::CString::new(name.as_bytes())
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
        // SAFETY: `current` is an open directory that outlives the call and `name` is
        // NUL-terminated; openat has no other preconditions.
        let fd = unsafe { libc::openat(current.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: openat just returned this descriptor to us and nothing else owns it.
        current = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(current)
}

fn canonical(path: &Path) -> Result<PathBuf, GitError> {
    std::fs::canonicalize(path).map_err(|source| GitError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes `.` and folds `..` lexically, the way git reads a path; a `..` that climbs above the
/// start is kept so the caller can see it.
fn normalize(path: &Path) -> PathBuf {
    let mut out: Vec<Component<'_>> = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(component),
            },
            other => out.push(other),
        }
    }
    out.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let status = std::process::Command::new("git")
            .args(["-c", "user.name=T", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    fn repo_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        for (path, text) in files {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, text).unwrap();
        }
        git(dir.path(), &["add", "-A"]);
        git(dir.path(), &["commit", "-q", "-m", "one"]);
        dir
    }

    #[test]
    fn reads_a_blob_at_a_revision_without_touching_the_working_tree() {
        let dir = repo_with(&[("p/a.toml", "first")]);
        std::fs::write(dir.path().join("p/a.toml"), "edited").unwrap();
        let repo = Repo::discover(&dir.path().join("p")).unwrap();
        let file = repo.file_at("base", "main", Path::new("p/a.toml")).unwrap();
        assert_eq!(file.bytes.as_deref(), Some(&b"first"[..]));
        assert_eq!(file.commit.len(), 40);
        assert_eq!(
            repo.working_tree_file(Path::new("p/a.toml")).unwrap(),
            Some(b"edited".to_vec())
        );
        let missing = repo
            .file_at("base", "HEAD", Path::new("nope.toml"))
            .unwrap();
        assert_eq!(missing.bytes, None);
        assert!(matches!(
            repo.file_at("base", "HEAD", Path::new("p")),
            Err(GitError::NotAFile {
                what: "a directory",
                ..
            })
        ));
    }

    #[test]
    fn the_working_tree_file_is_never_read_through_a_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "AWS_SECRET_ACCESS_KEY=hunter2").unwrap();
        std::fs::create_dir(outside.path().join("dir")).unwrap();
        std::fs::write(outside.path().join("dir/a.toml"), "AWS_SECRET=x").unwrap();
        let dir = repo_with(&[("p/a.toml", "first")]);
        let repo = Repo::discover(dir.path()).unwrap();
        let symlinked = |result: Result<Option<Vec<u8>>, GitError>| match result {
            Err(GitError::NotAFile { what, .. }) => what.contains("symbolic link"),
            other => panic!("expected a refusal, got {other:?}"),
        };

        // The policy file itself is a link to a secret.
        std::fs::remove_file(dir.path().join("p/a.toml")).unwrap();
        std::os::unix::fs::symlink(&secret, dir.path().join("p/a.toml")).unwrap();
        assert!(symlinked(repo.working_tree_file(Path::new("p/a.toml"))));

        // A directory on the way is.
        std::fs::remove_file(dir.path().join("p/a.toml")).unwrap();
        std::fs::remove_dir(dir.path().join("p")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("dir"), dir.path().join("p")).unwrap();
        assert!(symlinked(repo.working_tree_file(Path::new("p/a.toml"))));

        // A FIFO is refused without blocking; a missing file is still just missing.
        std::fs::remove_file(dir.path().join("p")).unwrap();
        std::fs::create_dir(dir.path().join("p")).unwrap();
        let fifo =
            std::ffi::CString::new(dir.path().join("p/a.toml").as_os_str().as_encoded_bytes())
                .unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            repo.working_tree_file(Path::new("p/a.toml")),
            Err(GitError::NotAFile {
                what: "a special file",
                ..
            })
        ));
        assert_eq!(repo.working_tree_file(Path::new("p/b.toml")).unwrap(), None);
    }

    #[test]
    fn a_missing_revision_names_the_fetch_that_brings_it() {
        let dir = repo_with(&[("a.toml", "x")]);
        git(
            dir.path(),
            &["remote", "add", "upstream", "https://git.invalid/x"],
        );
        let repo = Repo::discover(dir.path()).unwrap();
        let error = repo
            .file_at("base", "upstream/main", Path::new("a.toml"))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "base revision upstream/main is not in this clone; fetch it with \
             `git fetch --depth=1 upstream main:refs/remotes/upstream/main`"
        );
        let error = repo
            .file_at(
                "head",
                "0123456789abcdef0123456789abcdef01234567",
                Path::new("a"),
            )
            .unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("; fetch it with `git fetch --depth=1 upstream 0123456789abcdef0123456789abcdef01234567`"),
            "{error}"
        );
    }

    #[test]
    fn policy_paths_follow_gits_rev_path_rule() {
        let dir = repo_with(&[("sub/a.toml", "x")]);
        let repo = Repo::discover(dir.path()).unwrap();
        let sub = dir.path().join("sub");
        let at = |policy: &str, cwd: &Path| repo.path_in_repo(Path::new(policy), cwd);
        assert_eq!(at("a.toml", &sub).unwrap(), Path::new("a.toml"));
        assert_eq!(at("sub/./a.toml", &sub).unwrap(), Path::new("sub/a.toml"));
        assert_eq!(at("./a.toml", &sub).unwrap(), Path::new("sub/a.toml"));
        assert_eq!(at("../x/b.toml", &sub).unwrap(), Path::new("x/b.toml"));
        let absolute = sub.join("a.toml");
        assert_eq!(
            at(absolute.to_str().unwrap(), dir.path()).unwrap(),
            Path::new("sub/a.toml")
        );
        assert!(matches!(
            at("../../outside.toml", &sub),
            Err(GitError::OutsideRepository { .. })
        ));
        assert!(matches!(
            at("../outside.toml", dir.path()),
            Err(GitError::OutsideRepository { .. })
        ));
    }
}
