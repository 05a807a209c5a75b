//! `RUN --mount`: turns an exec's non-root mounts (kiln-llb [`Mount`]s) and secret env vars into
//! the sandbox's [`ExtraMount`]s and environment entries, and keeps what they need alive while the
//! step runs. Nothing a mount shows ever lands in the step's layer: the executor creates mount
//! points as stubs below the image (`mount_stubs`), and writable binds are throwaway copies.
//!
//! - `bind`: a path of the context or of another stage/image (`from=`), read-only by default. The
//!   sandbox can only bind host paths, so a stage's root is copied into the step's scratch dir
//!   first. `rw` binds get a private copy, so writes are discarded as in BuildKit and never reach
//!   the context or a shared staged copy.
//! - `cache`: a directory of the store (`cache_mounts/`, cleared by `kiln prune -a`) that persists
//!   across builds, keyed by `id` (and by its seed when `from=` is given). A new dir gets the
//!   mount's uid/gid/mode and its seed's content, prepared in scratch and renamed into place so
//!   that a concurrent user never sees it half-made. Sharing uses `flock` on the dir: `locked`
//!   holds an exclusive lock (two builds serialise), `shared` a non-blocking shared one (never
//!   waits), `private` takes the first of `id`, `id#1`, `id#2`… it can lock exclusively without
//!   waiting, so concurrent users each get their own dir.
//! - `tmpfs`: a fresh tmpfs of the given size.
//! - `secret`: the value given to `kiln build --secret` is written to a file of the step's scratch
//!   dir with the mount's uid/gid/mode and bind-mounted read-only (default target
//!   `/run/secrets/<id>`), or put in the environment (`env=`). Only ids ever reach ops, cache keys,
//!   history and progress; a missing secret is an error when `required`, else the mount is skipped.
//! - `ssh`: not supported; refused with an error naming the mount.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use kiln_executor::{ExtraMount, NativeSnapshotter, RootMount, Snapshot, Snapshotter};
use kiln_llb::{CacheSharing, ExecOp, Mount, MountKind};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::OpError;
use crate::ops::{OpContext, layer_dirs};
use crate::result::{Layer, OpOutput};

/// Where the value of a build secret comes from (`kiln build --secret id=X,src=FILE|env=VAR`).
/// `Debug` never shows a value.
#[derive(Clone)]
pub enum SecretSource {
    /// A host file, read when a step uses the secret.
    File(PathBuf),
    /// A value captured up front (from an environment variable of the `kiln build` process).
    Value(Vec<u8>),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::File(path) => f.debug_tuple("File").field(path).finish(),
            SecretSource::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

/// Build secrets by id.
pub type Secrets = BTreeMap<String, SecretSource>;

/// Why a `RUN --mount` could not be set up. Messages name the mount, never a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum RunMountError {
    #[error(
        "secret {id:?} is required but was not provided (pass it with --secret id={id},src=FILE or --secret id={id},env=VAR)"
    )]
    SecretMissing { id: String },
    #[error("reading secret {id:?} from {}: {source}", path.display())]
    SecretRead {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret {id:?} is not valid UTF-8, so it cannot be the environment variable {name}")]
    SecretNotText { id: String, name: String },
    #[error("writing secret {id:?} into the step's scratch dir: {source}")]
    SecretWrite {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "RUN --mount=type=ssh,id={id} (target {target}): SSH agent forwarding is not supported by kiln"
    )]
    SshUnsupported { id: String, target: String },
    #[error("{kind} mount at {target}: source {source_path:?} not found: {source}")]
    SourceNotFound {
        kind: &'static str,
        target: String,
        source_path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cache mount at {target}: its source {source_path:?} is not a directory")]
    SeedNotDir { target: String, source_path: String },
    #[error("{kind} mount at {target} has no source (a kiln-llb bug)")]
    NoSource { kind: &'static str, target: String },
    #[error("copying {source_path:?} for the {kind} mount at {target}: {source}")]
    Copy {
        kind: &'static str,
        target: String,
        source_path: String,
        #[source]
        source: Box<kiln_fileop::FileOpError>,
    },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cache mount at {target}: {action} {}: {source}", path.display())]
    CacheDir {
        target: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<RunMountError> for OpError {
    fn from(error: RunMountError) -> OpError {
        OpError::RunMount(Box::new(error))
    }
}

/// The mounts of a RUN besides its root, ready for the sandbox, and what keeps them valid while it
/// runs (dropping this releases cache locks; copies go with the step's scratch dir).
#[derive(Default)]
pub(crate) struct PreparedMounts {
    pub mounts: Vec<ExtraMount>,
    /// `NAME=value` entries for `--mount=type=secret,env=NAME`.
    pub secret_env: Vec<String>,
    /// Locks on cache dirs, released when the step ends.
    _locks: Vec<Flock<File>>,
    /// Copies of stage roots that binds read from.
    _copies: Vec<Snapshot>,
}

/// Prepares every mount of `exec` except its root, in order, using `scratch` (the step's scratch
/// dir, removed after the step) for copies and secret files.
///
/// # Errors
/// [`RunMountError`] (through [`OpError::RunMount`]) for a missing required secret, an unreadable
/// secret, an SSH mount, a bind source that does not exist, or a cache dir that cannot be made;
/// other [`OpError`]s for store and snapshot failures.
pub(crate) fn prepare_mounts(
    cx: &OpContext<'_>,
    exec: &ExecOp,
    inputs: &[OpOutput],
    scratch: &Path,
) -> Result<PreparedMounts, OpError> {
    let mut prepared = PreparedMounts::default();
    for (index, mount) in exec.mounts.iter().enumerate() {
        if mount.target == "/" {
            continue;
        }
        let work = scratch.join(format!("mount-{index}"));
        match &mount.kind {
            MountKind::Tmpfs { size } => prepared.mounts.push(ExtraMount::Tmpfs {
                target: PathBuf::from(&mount.target),
                size_bytes: *size,
            }),
            MountKind::Bind => prepared.add_bind(mount, inputs, &work)?,
            MountKind::Cache {
                id,
                sharing,
                uid,
                gid,
                mode,
            } => {
                let owner = OwnerMode {
                    uid: *uid,
                    gid: *gid,
                    mode: *mode,
                };
                prepared.add_cache(cx, mount, id, *sharing, owner, inputs, &work)?;
            }
            MountKind::Secret {
                id,
                required,
                uid,
                gid,
                mode,
            } => {
                let Some(value) = secret_value(cx.secrets, id, *required)? else {
                    tracing::debug!(id, "optional secret not provided; mount skipped");
                    continue;
                };
                let owner = OwnerMode {
                    uid: *uid,
                    gid: *gid,
                    mode: *mode,
                };
                let file = write_secret_file(scratch, index, id, &value, owner)?;
                prepared.mounts.push(ExtraMount::Secret {
                    source: file,
                    target: PathBuf::from(&mount.target),
                });
            }
            MountKind::Ssh { id, .. } => {
                return Err(RunMountError::SshUnsupported {
                    id: id.clone(),
                    target: mount.target.clone(),
                }
                .into());
            }
        }
    }
    for secret in &exec.secret_env {
        let Some(value) = secret_value(cx.secrets, &secret.id, secret.required)? else {
            continue;
        };
        let text = String::from_utf8(value).map_err(|_| RunMountError::SecretNotText {
            id: secret.id.clone(),
            name: secret.name.clone(),
        })?;
        prepared.secret_env.push(format!("{}={text}", secret.name));
    }
    Ok(prepared)
}

/// Owner and mode of a new cache dir or a secret file.
#[derive(Debug, Clone, Copy)]
struct OwnerMode {
    uid: u32,
    gid: u32,
    mode: u32,
}

impl PreparedMounts {
    fn add_bind(&mut self, mount: &Mount, inputs: &[OpOutput], work: &Path) -> Result<(), OpError> {
        let index = mount.input.ok_or_else(|| RunMountError::NoSource {
            kind: "bind",
            target: mount.target.clone(),
        })?;
        let selector = mount.selector.as_deref().unwrap_or("/");
        let (root, private) = match inputs.get(index as usize) {
            Some(OpOutput::Local(local)) => (local.selected_dir()?, false),
            // The copy of a stage is already private to this step.
            Some(OpOutput::Chain(chain)) => (self.copy_of(chain, &work.join("stage"))?, true),
            None => return Err(OpError::MissingInput(format!("#{index}"))),
        };
        let source = find_in_root(&root, selector, "bind", &mount.target)?;
        let source = if mount.readonly || private {
            source
        } else {
            // BuildKit discards what a RUN writes to a rw bind; the sandbox's binds write through,
            // so the command gets a copy.
            copy_selection(
                &root,
                selector,
                &source,
                &work.join("rw"),
                "bind",
                &mount.target,
            )?
        };
        self.mounts.push(ExtraMount::Bind {
            source,
            target: PathBuf::from(&mount.target),
            read_only: mount.readonly,
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn add_cache(
        &mut self,
        cx: &OpContext<'_>,
        mount: &Mount,
        id: &str,
        sharing: CacheSharing,
        owner: OwnerMode,
        inputs: &[OpOutput],
        work: &Path,
    ) -> Result<(), OpError> {
        let selector = mount.selector.as_deref().unwrap_or("/");
        // A seeded cache is its own cache: the seed only fills a new dir, so the same id with
        // another seed must not reuse (or be polluted by) the unseeded one.
        let (seed, base_id) = match mount.input {
            None => (None, id.to_string()),
            Some(index) => match inputs.get(index as usize) {
                Some(OpOutput::Local(local)) => (
                    Some(Seed::Dir(local.selected_dir()?)),
                    format!("{id}\0from=local:{}{selector}", local.name),
                ),
                Some(OpOutput::Chain(chain)) => {
                    let identity = chain
                        .last()
                        .map_or_else(|| "scratch".to_string(), |l| l.chain_id.to_string());
                    (
                        Some(Seed::Chain(chain.clone())),
                        format!("{id}\0from={identity}{selector}"),
                    )
                }
                None => return Err(OpError::MissingInput(format!("#{index}"))),
            },
        };
        let mut attempt = 0usize;
        loop {
            let dir_id = if attempt == 0 {
                base_id.clone()
            } else {
                format!("{base_id}#{attempt}")
            };
            let dir = cx.store.layout().cache_mount_path(&dir_id);
            if !dir.exists() {
                self.create_cache_dir(&dir, owner, seed.as_ref(), selector, mount, work)?;
            }
            let cache_err = |action: &'static str| {
                let dir = dir.clone();
                let target = mount.target.clone();
                move |source: std::io::Error| RunMountError::CacheDir {
                    target,
                    action,
                    path: dir,
                    source,
                }
            };
            let handle = File::open(&dir).map_err(cache_err("open"))?;
            let lock = match sharing {
                CacheSharing::Locked => Some(
                    Flock::lock(handle, FlockArg::LockExclusive)
                        .map_err(|(_, errno)| cache_err("lock")(errno.into()))?,
                ),
                // Shared users never wait; the shared lock only tells private users it is busy.
                CacheSharing::Shared => Flock::lock(handle, FlockArg::LockSharedNonblock).ok(),
                CacheSharing::Private => {
                    match Flock::lock(handle, FlockArg::LockExclusiveNonblock) {
                        Ok(lock) => Some(lock),
                        Err((_, Errno::EWOULDBLOCK)) => {
                            attempt += 1;
                            continue;
                        }
                        Err((_, errno)) => return Err(cache_err("lock")(errno.into()).into()),
                    }
                }
            };
            self._locks.extend(lock);
            self.mounts.push(ExtraMount::Bind {
                source: dir,
                target: PathBuf::from(&mount.target),
                read_only: mount.readonly,
            });
            return Ok(());
        }
    }

    /// Makes a new cache dir in scratch (owner, mode, seed content) and renames it into place; a
    /// concurrent creator winning the race is fine.
    fn create_cache_dir(
        &mut self,
        dir: &Path,
        owner: OwnerMode,
        seed: Option<&Seed>,
        selector: &str,
        mount: &Mount,
        work: &Path,
    ) -> Result<(), OpError> {
        let fresh = work.join("cache");
        let cache_err = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            let target = mount.target.clone();
            move |source: std::io::Error| RunMountError::CacheDir {
                target,
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&fresh).map_err(cache_err("create", &fresh))?;
        if let Some(seed) = seed {
            let root = match seed {
                Seed::Dir(dir) => dir.clone(),
                Seed::Chain(chain) => self.copy_of(chain, &work.join("seed"))?,
            };
            let source = find_in_root(&root, selector, "cache", &mount.target)?;
            if !source.is_dir() {
                return Err(RunMountError::SeedNotDir {
                    target: mount.target.clone(),
                    source_path: selector.to_string(),
                }
                .into());
            }
            kiln_fileop::copy(&root, &fresh, &whole_copy(selector)).map_err(|source| {
                RunMountError::Copy {
                    kind: "cache",
                    target: mount.target.clone(),
                    source_path: selector.to_string(),
                    source: Box::new(source),
                }
            })?;
        }
        // A new cache dir gets the owner and mode the mount asks for, as in BuildKit.
        std::os::unix::fs::chown(&fresh, Some(owner.uid), Some(owner.gid))
            .map_err(cache_err("set the owner of", &fresh))?;
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(owner.mode))
            .map_err(cache_err("set the mode of", &fresh))?;
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(cache_err("create", parent))?;
        }
        // NOREPLACE: a plain rename would replace a concurrent creator's (empty) dir while it is
        // already locked and in use.
        let renamed = nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &fresh,
            nix::fcntl::AT_FDCWD,
            dir,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        );
        match renamed {
            Ok(()) => Ok(()),
            // Another step created it first: use theirs.
            Err(_) if dir.is_dir() => Ok(()),
            Err(errno) => Err(cache_err("create", dir)(errno.into()).into()),
        }
    }

    /// A plain-directory copy of a chain's root filesystem, to bind or seed from.
    fn copy_of(&mut self, chain: &[Layer], scratch: &Path) -> Result<PathBuf, OpError> {
        let snapshot = NativeSnapshotter.prepare(&layer_dirs(chain), scratch, &[])?;
        let root = match snapshot.mount() {
            RootMount::Bind { source } => source.clone(),
            RootMount::Overlay { upper_dir, .. } => upper_dir.clone(),
        };
        self._copies.push(snapshot);
        Ok(root)
    }
}

/// Where a cache mount's first content comes from.
enum Seed {
    Dir(PathBuf),
    Chain(Vec<Layer>),
}

/// `selector` resolved inside `root` (symlinks followed as if `root` were `/`, so a link cannot
/// point a mount at a host path); the path must exist.
fn find_in_root(
    root: &Path,
    selector: &str,
    kind: &'static str,
    target: &str,
) -> Result<PathBuf, RunMountError> {
    let not_found = |source: std::io::Error| RunMountError::SourceNotFound {
        kind,
        target: target.to_string(),
        source_path: selector.to_string(),
        source,
    };
    let resolved = kiln_context::sources::resolve_in_root(root, selector, true, selector)
        .map_err(|e| not_found(std::io::Error::other(e)))?;
    let source = root.join(resolved.trim_start_matches('/'));
    std::fs::symlink_metadata(&source).map_err(not_found)?;
    Ok(source)
}

/// Copy settings for "everything at `selector`, owners and modes kept".
fn whole_copy(selector: &str) -> kiln_fileop::CopyOptions {
    let mut options = kiln_fileop::CopyOptions::new(vec![selector.to_string()], "/");
    options.op = "RUN --mount".to_string();
    options.preserve_owner = true;
    options.allow_wildcard = false;
    options
}

/// A private copy of what `selector` (already resolved to `source`) names in `root`, made under
/// `dest`; returns the path to mount.
fn copy_selection(
    root: &Path,
    selector: &str,
    source: &Path,
    dest: &Path,
    kind: &'static str,
    target: &str,
) -> Result<PathBuf, RunMountError> {
    let copy_err = |source: kiln_fileop::FileOpError| RunMountError::Copy {
        kind,
        target: target.to_string(),
        source_path: selector.to_string(),
        source: Box::new(source),
    };
    std::fs::create_dir_all(dest).map_err(|source| RunMountError::Io {
        action: "create the copy dir",
        path: dest.to_path_buf(),
        source,
    })?;
    kiln_fileop::copy(root, dest, &whole_copy(selector)).map_err(copy_err)?;
    // A directory's contents land in `dest`; a file lands as `dest/<name>`.
    if source.is_dir() {
        Ok(dest.to_path_buf())
    } else {
        let name = source.file_name().unwrap_or_default();
        Ok(dest.join(name))
    }
}

/// The value of secret `id`: `None` when it was not given and is optional.
fn secret_value(
    secrets: &Secrets,
    id: &str,
    required: bool,
) -> Result<Option<Vec<u8>>, RunMountError> {
    match secrets.get(id) {
        None if required => Err(RunMountError::SecretMissing { id: id.to_string() }),
        None => Ok(None),
        Some(SecretSource::Value(value)) => Ok(Some(value.clone())),
        Some(SecretSource::File(path)) => {
            std::fs::read(path)
                .map(Some)
                .map_err(|source| RunMountError::SecretRead {
                    id: id.to_string(),
                    path: path.clone(),
                    source,
                })
        }
    }
}

/// Writes a secret into `scratch/secrets/<index>` (a dir only root can enter) with the mount's
/// owner and mode; the file goes with the scratch dir when the step ends.
fn write_secret_file(
    scratch: &Path,
    index: usize,
    id: &str,
    value: &[u8],
    owner: OwnerMode,
) -> Result<PathBuf, RunMountError> {
    let write_err = |source: std::io::Error| RunMountError::SecretWrite {
        id: id.to_string(),
        source,
    };
    let dir = scratch.join("secrets");
    std::fs::create_dir_all(&dir).map_err(write_err)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(write_err)?;
    let path = dir.join(index.to_string());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(write_err)?;
    file.write_all(value).map_err(write_err)?;
    std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid)).map_err(write_err)?;
    file.set_permissions(std::fs::Permissions::from_mode(owner.mode))
        .map_err(write_err)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_secret_value() {
        let shown = format!("{:?}", SecretSource::Value(b"hunter2".to_vec()));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_missing_secret_is_an_error_only_when_required() {
        let secrets = Secrets::new();
        let error = secret_value(&secrets, "token", true).unwrap_err();
        assert!(error.to_string().contains("--secret id=token"), "{error}");
        assert!(secret_value(&secrets, "token", false).unwrap().is_none());
    }

    #[test]
    fn a_file_secret_is_read_when_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "value").unwrap();
        let secrets = Secrets::from([("a".to_string(), SecretSource::File(path))]);
        assert_eq!(
            secret_value(&secrets, "a", true).unwrap().as_deref(),
            Some(&b"value"[..])
        );
    }

    #[test]
    fn secret_files_get_the_mounts_owner_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let owner = OwnerMode {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mode: 0o440,
        };
        let path = write_secret_file(dir.path(), 3, "a", b"v", owner).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o440);
        assert_eq!(std::fs::read(&path).unwrap(), b"v");
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_rw_copy_of_a_file_or_dir_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), "x").unwrap();
        let source = find_in_root(&root, "/sub", "bind", "/t").unwrap();
        let copy =
            copy_selection(&root, "/sub", &source, &dir.path().join("c1"), "bind", "/t").unwrap();
        std::fs::write(copy.join("f"), "changed").unwrap();
        assert_eq!(std::fs::read_to_string(root.join("sub/f")).unwrap(), "x");

        let source = find_in_root(&root, "/sub/f", "bind", "/t").unwrap();
        let copy = copy_selection(
            &root,
            "/sub/f",
            &source,
            &dir.path().join("c2"),
            "bind",
            "/t",
        )
        .unwrap();
        assert_eq!(copy, dir.path().join("c2/f"));
        assert_eq!(std::fs::read_to_string(copy).unwrap(), "x");
    }

    fn cache_exec(sharing: CacheSharing) -> ExecOp {
        ExecOp {
            args: vec!["true".into()],
            env: Vec::new(),
            cwd: "/".into(),
            user: String::new(),
            network: kiln_llb::NetworkMode::Sandbox,
            security: kiln_llb::SecurityMode::Sandbox,
            mounts: vec![Mount {
                target: "/cache".into(),
                input: None,
                selector: None,
                readonly: false,
                output: None,
                kind: MountKind::Cache {
                    id: "c".into(),
                    sharing,
                    uid: 0,
                    gid: 0,
                    mode: 0o755,
                },
            }],
            secret_env: Vec::new(),
            proxy_env: Vec::new(),
        }
    }

    fn bind_source(prepared: &PreparedMounts) -> PathBuf {
        match &prepared.mounts[0] {
            ExtraMount::Bind { source, .. } => source.clone(),
            other => panic!("expected a bind, got {other:?}"),
        }
    }

    #[test]
    fn private_cache_users_get_their_own_dirs_and_shared_users_one() {
        let root = tempfile::tempdir().unwrap();
        let store = kiln_store::Store::open(root.path()).unwrap();
        let locals = BTreeMap::new();
        let secrets = Secrets::new();
        let cx = OpContext {
            store: &store,
            snapshotter: &NativeSnapshotter,
            layer_options: crate::layers::LayerOptions::default(),
            locals: &locals,
            secrets: &secrets,
            puller: None,
            progress: &crate::progress::NoProgress,
            step: None,
        };
        let scratch = tempfile::tempdir().unwrap();
        let prepare = |exec: &ExecOp, name: &str| {
            prepare_mounts(&cx, exec, &[], &scratch.path().join(name)).unwrap()
        };
        let private = cache_exec(CacheSharing::Private);
        let first = prepare(&private, "1");
        let second = prepare(&private, "2");
        assert_ne!(bind_source(&first), bind_source(&second));
        let first_dir = bind_source(&first);
        drop(first);
        let third = prepare(&private, "3");
        assert_eq!(
            bind_source(&third),
            first_dir,
            "a free private dir is reused"
        );
        drop((second, third));

        let shared = cache_exec(CacheSharing::Shared);
        let one = prepare(&shared, "4");
        let two = prepare(&shared, "5");
        assert_eq!(bind_source(&one), first_dir);
        assert_eq!(bind_source(&two), first_dir);
        // A private user does not take a dir shared users are in.
        let private_user = prepare(&private, "6");
        assert_ne!(bind_source(&private_user), first_dir);
    }

    #[test]
    fn a_missing_bind_source_names_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        let error = find_in_root(dir.path(), "/nope", "bind", "/mnt").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("/mnt") && text.contains("/nope"), "{text}");
    }
}
