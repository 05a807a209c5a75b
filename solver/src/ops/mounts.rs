//! `RUN --mount`: turns an exec's non-root mounts (kiln-llb [`Mount`]s) and secret env vars into
//! the sandbox's [`ExtraMount`]s and environment entries, and keeps what they need alive while the
//! step runs. Nothing a mount shows ever lands in the step's layer: the executor creates mount
//! points as stubs below the image (`mount_stubs`), and writable binds are throwaway copies.
//!
//! - `bind`: a path of the context or of another stage/image (`from=`), read-only by default. The
//!   sandbox can only bind host paths, so a stage's root is copied into the step's scratch dir
//!   first. From the context only what `source=` selects is ever staged (the set the step's key
//!   covers): the user's own directory when `.dockerignore` hides nothing in it, else its
//!   visible entries alone, hard-linked into the step's scratch dir — never the whole context
//!   (unless `source=/`, when the build's one shared staged context serves). `rw` binds get a
//!   private copy, so writes are discarded as in BuildKit and never reach the context or a
//!   shared staged copy.
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
//! - `ssh`: the agent socket given to `kiln build --ssh ID=…` for the mount's `id` (default
//!   `default`) is shown at the target (default `/run/buildkit/ssh_agent.<n>`) through an
//!   [`AgentProxy`](crate::ssh::AgentProxy) in the step's scratch dir, with the mount's uid/gid/mode.
//!   As in BuildKit's LLB, `SSH_AUTH_SOCK` is set to the first ssh mount's target unless the step's
//!   environment already has it. A missing id is an error when `required`, else the mount is
//!   skipped. Like secrets, only ids and targets reach ops and cache keys — never a host path.

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

/// SSH agent sockets by id (`kiln build --ssh ID=SOCKET`), for `RUN --mount=type=ssh`.
pub type SshAgents = BTreeMap<String, PathBuf>;

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
        "RUN --mount=type=ssh,id={id} is required but no SSH agent {id:?} was forwarded (pass --ssh {id}[=SOCKET|KEY[,KEY]])"
    )]
    SshMissing { id: String },
    #[error("forwarding SSH agent {id:?} to {target}: {source}")]
    SshProxy {
        id: String,
        target: String,
        #[source]
        source: crate::ssh::AgentProxyError,
    },
    #[error("forwarding SSH agent {id:?} to {target}: {action} {}: {source}", path.display())]
    SshDir {
        id: String,
        target: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    /// `NAME=value` entries the mounts add to the step's environment: `--mount=type=secret,env=NAME`
    /// and `SSH_AUTH_SOCK` for ssh mounts.
    pub secret_env: Vec<String>,
    /// SSH agent proxies, listening until the step ends.
    _ssh_proxies: Vec<crate::ssh::AgentProxy>,
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
/// secret, a missing required SSH agent or a failing agent proxy, a bind source that does not exist, or a cache dir that cannot be made;
/// other [`OpError`]s for store and snapshot failures.
pub(crate) fn prepare_mounts(
    cx: &OpContext<'_>,
    exec: &ExecOp,
    inputs: &[OpOutput],
    scratch: &Path,
) -> Result<PreparedMounts, OpError> {
    let mut prepared = PreparedMounts::default();
    let mut first_ssh_target: Option<&str> = None;
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
            MountKind::Ssh {
                id,
                required,
                uid,
                gid,
                mode,
            } => {
                // BuildKit sets SSH_AUTH_SOCK when it builds the op, whether or not the agent is
                // then forwarded.
                first_ssh_target.get_or_insert(&mount.target);
                let Some(agent) = ssh_agent(cx.ssh_agents, id, *required)? else {
                    tracing::debug!(id, "optional SSH agent not forwarded; mount skipped");
                    continue;
                };
                let owner = OwnerMode {
                    uid: *uid,
                    gid: *gid,
                    mode: *mode,
                };
                let proxy = start_agent_proxy(scratch, index, id, &mount.target, agent, owner)?;
                prepared.mounts.push(ExtraMount::Bind {
                    source: proxy.path().to_path_buf(),
                    target: PathBuf::from(&mount.target),
                    read_only: true,
                });
                prepared._ssh_proxies.push(proxy);
            }
        }
    }
    if let Some(target) = first_ssh_target
        && !exec
            .env
            .iter()
            .any(|entry| entry.starts_with("SSH_AUTH_SOCK="))
    {
        prepared.secret_env.push(format!("SSH_AUTH_SOCK={target}"));
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
        let Selection {
            root,
            selector,
            source,
            private,
        } = match inputs.get(index as usize) {
            Some(OpOutput::Local(local)) => context_selection(
                local,
                selector,
                !mount.readonly,
                &work.join("context"),
                "bind",
                &mount.target,
            )?,
            // The copy of a stage is already private to this step.
            Some(OpOutput::Chain(chain)) => {
                let root = self.copy_of(chain, &work.join("stage"))?;
                let source = find_in_root(&root, selector, "bind", &mount.target)?;
                Selection {
                    root,
                    selector: selector.to_string(),
                    source,
                    private: true,
                }
            }
            None => return Err(OpError::MissingInput(format!("#{index}"))),
        };
        let selector = selector.as_str();
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
                // Resolved only if the cache dir is new: a warm cache never stages the context.
                Some(OpOutput::Local(local)) => (
                    Some(Seed::Local(local.clone())),
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
            let (root, selector, source) = match seed {
                Seed::Local(local) => {
                    // Only read: the seed is copied into the new cache dir.
                    let selection = context_selection(
                        local,
                        selector,
                        false,
                        &work.join("seed"),
                        "cache",
                        &mount.target,
                    )?;
                    (selection.root, selection.selector, selection.source)
                }
                Seed::Chain(chain) => {
                    let root = self.copy_of(chain, &work.join("seed"))?;
                    let source = find_in_root(&root, selector, "cache", &mount.target)?;
                    (root, selector.to_string(), source)
                }
            };
            let selector = selector.as_str();
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
    Local(crate::result::LocalDir),
    Chain(Vec<Layer>),
}

/// What a mount reads from a root: `selector` resolved to `source` inside `root`.
struct Selection {
    /// The directory `selector` is relative to.
    root: PathBuf,
    selector: String,
    /// The file or directory to mount.
    source: PathBuf,
    /// Whether `root` is a copy private to this step (writes to it reach nothing else).
    private: bool,
}

/// What `selector` selects in a build context, for a bind or a cache seed: only that is ever
/// staged, never the rest of the context, and it is exactly what the step's cache key covers
/// (`cache::key`: the same `resolve_sources` and `select_entries`, `.dockerignore` applied).
///
/// - A context without ignore patterns, or a selection in which the patterns hide nothing: the
///   user's own directory, read in place.
/// - A selection with hidden entries: its visible entries alone, staged in `work` — hard-linked
///   for a read-only use (cheap; the mount cannot write through them), copied when `writable`
///   (a private copy). The whole context (`source=/`) read-only is the build's one shared staged
///   context, made once for every step that needs it.
/// - A selection that is itself hidden: [`RunMountError::SourceNotFound`], as for a COPY.
fn context_selection(
    local: &crate::result::LocalDir,
    selector: &str,
    writable: bool,
    work: &Path,
    kind: &'static str,
    target: &str,
) -> Result<Selection, OpError> {
    let Some(ignore) = &local.ignore else {
        let source = find_in_root(&local.path, selector, kind, target)?;
        return Ok(Selection {
            root: local.path.clone(),
            selector: selector.to_string(),
            source,
            private: false,
        });
    };
    let not_found = |error: kiln_context::SourceError| RunMountError::SourceNotFound {
        kind,
        target: target.to_string(),
        source_path: selector.to_string(),
        source: std::io::Error::other(error),
    };
    let patterns =
        kiln_context::IgnorePatterns::compile(&ignore.excludes).map_err(|error| OpError::Io {
            action: "compile the ignore patterns of",
            path: local.path.clone(),
            source: std::io::Error::other(error.to_string()),
        })?;
    let options = kiln_context::SourceOptions {
        ignore: Some(&patterns),
        follow_symlinks: true,
        allow_wildcards: false,
    };
    let resolved =
        kiln_context::resolve_sources(&local.path, selector, &options).map_err(not_found)?;
    // Resolved, so no symlink is left on the way and `path` is where the data is.
    let path = resolved
        .first()
        .map(|source| source.path.clone())
        .unwrap_or_default();
    let in_place = format!("/{path}");
    let data = local.path.join(&path);
    let hidden = data.is_dir() && hides_something(&local.path, &path, &patterns)?;
    if !hidden {
        return Ok(Selection {
            root: local.path.clone(),
            source: data,
            selector: in_place,
            private: false,
        });
    }
    if !writable && path.is_empty() {
        let root = local.selected_dir()?;
        return Ok(Selection {
            source: root.clone(),
            root,
            selector: "/".to_string(),
            private: false,
        });
    }
    std::fs::create_dir_all(work).map_err(|source| RunMountError::Io {
        action: "create the copy dir",
        path: work.to_path_buf(),
        source,
    })?;
    let staged = work.join("selection");
    let linked = !writable && {
        let selection = kiln_context::select_entries(
            &local.path,
            &resolved,
            Some(&patterns),
            &kiln_context::IgnorePatterns::empty(),
        )
        .map_err(not_found)?;
        let entries = selection.into_iter().flat_map(|s| s.entries);
        match link_selection(&local.path, &path, entries, &staged) {
            Ok(()) => true,
            Err(reason) => {
                tracing::debug!(%reason, "hard-linking the mount's source failed; copying it");
                if staged.exists() {
                    std::fs::remove_dir_all(&staged).map_err(|source| RunMountError::Io {
                        action: "clear",
                        path: staged.clone(),
                        source,
                    })?;
                }
                false
            }
        }
    };
    if !linked {
        // The patterns are applied while reading, so hidden entries are never copied.
        let mut options = whole_copy(&in_place);
        options.follow_symlinks = false;
        options.context_excludes = ignore.excludes.clone();
        std::fs::create_dir_all(&staged).map_err(|source| RunMountError::Io {
            action: "create the copy dir",
            path: staged.clone(),
            source,
        })?;
        kiln_fileop::copy(&local.path, &staged, &options).map_err(|source| {
            RunMountError::Copy {
                kind,
                target: target.to_string(),
                source_path: selector.to_string(),
                source: Box::new(source),
            }
        })?;
    }
    Ok(Selection {
        root: staged.clone(),
        selector: "/".to_string(),
        source: staged,
        private: writable,
    })
}

/// Whether the patterns hide anything below the directory `dir` (root-relative) of `root`. Stops
/// at the first hidden entry; reads directories only (no `stat` per file).
fn hides_something(
    root: &Path,
    dir: &str,
    patterns: &kiln_context::IgnorePatterns,
) -> Result<bool, RunMountError> {
    let mut pending = vec![dir.to_string()];
    while let Some(dir) = pending.pop() {
        let absolute = root.join(&dir);
        let entries = std::fs::read_dir(&absolute).map_err(|source| RunMountError::Io {
            action: "read the directory",
            path: absolute.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| RunMountError::Io {
                action: "read the directory",
                path: absolute.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                // Not UTF-8: the patterns cannot be asked; stage to be safe.
                return Ok(true);
            };
            let relative = if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            };
            if patterns.matches(&relative) {
                return Ok(true);
            }
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pending.push(relative);
            }
        }
    }
    Ok(false)
}

/// Recreates the directory `dir` (root-relative) of `root` at `dest` from its selected `entries`
/// (root-relative paths, `dir` itself first): directories and symlinks anew with the source's
/// owner, mode and times, regular files as hard links. Fails (and the caller copies instead) on
/// anything it cannot reproduce that way.
fn link_selection(
    root: &Path,
    dir: &str,
    entries: impl Iterator<Item = kiln_context::Entry>,
    dest: &Path,
) -> Result<(), String> {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let mut placed = Vec::new();
    for entry in entries {
        // The first entry is `dir` itself (labelled `dir`, or `.` for the root).
        let relative = if entry.path == dir || entry.path == "." {
            ""
        } else {
            entry
                .path
                .strip_prefix(&prefix)
                .ok_or_else(|| format!("{} is outside {dir}", entry.path))?
        };
        placed.push((dest.join(relative), entry));
    }
    link_entries(root, placed)
}

/// Recreates each `(destination, entry)` of `root` (entry paths root-relative, parents before
/// children, each destination's parent already there): directories and symlinks anew with the
/// entry's owner, mode and times, regular files as hard links to `root`'s. Fails (and the callers
/// copy instead) on any other kind of file.
pub(super) fn link_entries(
    root: &Path,
    entries: impl IntoIterator<Item = (PathBuf, kiln_context::Entry)>,
) -> Result<(), String> {
    use kiln_context::FileKind;
    use std::os::unix::fs::lchown;

    let mut dirs = Vec::new();
    for (to, entry) in entries {
        let fail = |e: std::io::Error| format!("{}: {e}", to.display());
        match entry.kind {
            FileKind::Dir => {
                std::fs::create_dir_all(&to).map_err(fail)?;
                dirs.push((to, entry));
            }
            FileKind::File => std::fs::hard_link(root.join(&entry.path), &to).map_err(fail)?,
            FileKind::Symlink => {
                let target = entry.link_target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(target, &to).map_err(fail)?;
                lchown(&to, Some(entry.uid), Some(entry.gid)).map_err(fail)?;
                set_mtime_no_follow(&to, entry.mtime_ns)?;
            }
            other => return Err(format!("{} is a {}", entry.path, other.as_str())),
        }
    }
    // Directory metadata last, deepest first: creating children changes a directory's mtime.
    for (to, entry) in dirs.iter().rev() {
        let fail = |e: std::io::Error| format!("{}: {e}", to.display());
        lchown(to, Some(entry.uid), Some(entry.gid)).map_err(fail)?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(entry.mode)).map_err(fail)?;
        set_mtime_no_follow(to, entry.mtime_ns)?;
    }
    Ok(())
}

/// Sets both times of `path` itself (never a symlink's target) to `mtime_ns` nanoseconds since
/// the epoch.
pub(super) fn set_mtime_no_follow(path: &Path, mtime_ns: i64) -> Result<(), String> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;

    let time = TimeSpec::new(
        mtime_ns.div_euclid(1_000_000_000),
        mtime_ns.rem_euclid(1_000_000_000),
    );
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &time,
        &time,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| format!("{}: {e}", path.display()))
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

/// The agent socket forwarded as `id`: `None` when it was not given and is optional.
fn ssh_agent<'a>(
    agents: &'a SshAgents,
    id: &str,
    required: bool,
) -> Result<Option<&'a Path>, RunMountError> {
    match agents.get(id) {
        Some(socket) => Ok(Some(socket)),
        None if required => Err(RunMountError::SshMissing { id: id.to_string() }),
        None => Ok(None),
    }
}

/// Starts a proxy for `agent` at `scratch/ssh/<index>.sock` (in a dir only root can enter) with
/// the mount's owner and mode; it stops when dropped, and its socket goes with the scratch dir.
fn start_agent_proxy(
    scratch: &Path,
    index: usize,
    id: &str,
    target: &str,
    agent: &Path,
    owner: OwnerMode,
) -> Result<crate::ssh::AgentProxy, RunMountError> {
    let dir = scratch.join("ssh");
    let dir_err = |action: &'static str| {
        let dir = dir.clone();
        move |source: std::io::Error| RunMountError::SshDir {
            id: id.to_string(),
            target: target.to_string(),
            action,
            path: dir,
            source,
        }
    };
    std::fs::create_dir_all(&dir).map_err(dir_err("create"))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(dir_err("chmod"))?;
    crate::ssh::AgentProxy::start(
        agent,
        &dir.join(format!("{index}.sock")),
        owner.uid,
        owner.gid,
        owner.mode,
    )
    .map_err(|source| RunMountError::SshProxy {
        id: id.to_string(),
        target: target.to_string(),
        source,
    })
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

    /// The context these tests prepare mounts in: the native snapshotter, no puller, no progress,
    /// no limits.
    fn test_context<'a>(
        store: &'a kiln_store::Store,
        locals: &'a BTreeMap<String, crate::ops::LocalSource>,
        secrets: &'a Secrets,
        ssh_agents: &'a SshAgents,
    ) -> OpContext<'a> {
        OpContext {
            store,
            snapshotter: &NativeSnapshotter,
            layer_options: crate::layers::LayerOptions::default(),
            locals,
            secrets,
            ssh_agents,
            puller: None,
            progress: &crate::progress::NoProgress,
            step: None,
            limits: kiln_executor::ResourceLimits::default(),
            extra_hosts: &[],
        }
    }

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
        let agents = SshAgents::new();
        let cx = test_context(&store, &locals, &secrets, &agents);
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

    /// A context dir with `.dockerignore`-style `excludes`, as the solver hands it to a RUN:
    /// (the store's temp root, the context's `LocalDir`).
    fn context_with(files: &[&str], excludes: &[&str]) -> (tempfile::TempDir, OpOutput) {
        let dir = tempfile::tempdir().unwrap();
        let context = dir.path().join("context");
        for path in files {
            let path = context.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        }
        let store = kiln_store::Store::open(&dir.path().join("store")).unwrap();
        let locals = BTreeMap::from([(
            "context".to_string(),
            crate::ops::LocalSource {
                dir: context,
                excludes: excludes.iter().map(|e| e.to_string()).collect(),
            },
        )]);
        let secrets = Secrets::new();
        let agents = SshAgents::new();
        let cx = test_context(&store, &locals, &secrets, &agents);
        let source = kiln_llb::SourceOp::Local {
            name: "context".into(),
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
            follow_paths: Vec::new(),
        };
        let output = crate::ops::source::run_source(&cx, &source).unwrap();
        (dir, output)
    }

    fn bind_exec(selector: &str, readonly: bool) -> ExecOp {
        let mut exec = cache_exec(CacheSharing::Shared);
        exec.mounts[0] = Mount {
            target: "/mnt".into(),
            input: Some(0),
            selector: Some(selector.into()),
            readonly,
            output: None,
            kind: MountKind::Bind,
        };
        exec
    }

    /// Prepares `exec`'s mounts with `context` as input 0, in a scratch dir under `dir`.
    fn prepare_with(dir: &Path, context: &OpOutput, exec: &ExecOp) -> PreparedMounts {
        let store = kiln_store::Store::open(&dir.join("store")).unwrap();
        let (locals, secrets) = (BTreeMap::new(), Secrets::new());
        let agents = SshAgents::new();
        let cx = test_context(&store, &locals, &secrets, &agents);
        let scratch = tempfile::Builder::new()
            .prefix("scratch")
            .tempdir_in(dir)
            .unwrap()
            .keep();
        prepare_mounts(&cx, exec, std::slice::from_ref(context), &scratch).unwrap()
    }

    fn link_count(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(path).unwrap())
    }

    #[test]
    fn a_bind_of_a_context_subdir_stages_nothing_else() {
        let files = ["sub/a.txt", "sub/deep/b.txt", "other/big.bin", "app.log"];
        let (dir, context) = context_with(&files, &["*.log", "other/skip"]);
        // Nothing under `sub` is ignored: the user's dir is bound as it is.
        let prepared = prepare_with(dir.path(), &context, &bind_exec("sub", true));
        assert_eq!(bind_source(&prepared), dir.path().join("context/sub"));
        // Staging the whole context hard-links every file; nothing may have been linked.
        for file in files {
            assert_eq!(
                link_count(&dir.path().join("context").join(file)),
                1,
                "{file}"
            );
        }
    }

    #[test]
    fn a_bind_of_a_context_subdir_with_ignored_entries_shows_only_the_visible_ones() {
        let files = [
            "sub/a.txt",
            "sub/debug.log",
            "sub/keep.log",
            "other/big.bin",
        ];
        let (dir, context) = context_with(&files, &["**/*.log", "!sub/keep.log"]);
        let prepared = prepare_with(dir.path(), &context, &bind_exec("/sub", true));
        let source = bind_source(&prepared);
        assert!(
            !source.starts_with(dir.path().join("context")),
            "a private copy: {source:?}"
        );
        let mut names: Vec<String> = std::fs::read_dir(&source)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a.txt", "keep.log"]);
        assert_eq!(link_count(&dir.path().join("context/other/big.bin")), 1);
        assert_eq!(
            link_count(&dir.path().join("context/sub/a.txt")),
            2,
            "a read-only selection is hard-linked, not copied"
        );

        // The whole context, read-only: the build's shared staged context, without hidden files.
        let prepared = prepare_with(dir.path(), &context, &bind_exec("/", true));
        let whole = bind_source(&prepared);
        assert!(whole.join("other/big.bin").is_file());
        assert!(whole.join("sub/keep.log").is_file());
        assert!(!whole.join("sub/debug.log").exists());

        // A single file, and an ignored one (not found, as for a COPY).
        let prepared = prepare_with(dir.path(), &context, &bind_exec("sub/a.txt", true));
        assert_eq!(bind_source(&prepared), dir.path().join("context/sub/a.txt"));
        let store = kiln_store::Store::open(&dir.path().join("store")).unwrap();
        let (locals, secrets) = (BTreeMap::new(), Secrets::new());
        let agents = SshAgents::new();
        let cx = test_context(&store, &locals, &secrets, &agents);
        let error = prepare_mounts(
            &cx,
            &bind_exec("sub/debug.log", true),
            std::slice::from_ref(&context),
            &dir.path().join("scratch-x"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("sub/debug.log"), "{error}");
    }

    #[test]
    fn a_rw_bind_of_a_partly_ignored_subdir_writes_to_its_private_copy() {
        let files = ["sub/a.txt", "sub/debug.log"];
        let (dir, context) = context_with(&files, &["**/*.log"]);
        let prepared = prepare_with(dir.path(), &context, &bind_exec("sub", false));
        let source = bind_source(&prepared);
        std::fs::write(source.join("a.txt"), "changed").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("context/sub/a.txt")).unwrap(),
            "x"
        );
        assert!(!source.join("debug.log").exists());
    }

    fn ssh_exec(mounts: &[(&str, &str, bool)], env: &[&str]) -> ExecOp {
        let mut exec = cache_exec(CacheSharing::Shared);
        exec.env = env.iter().map(|e| e.to_string()).collect();
        exec.mounts = mounts
            .iter()
            .map(|(id, target, required)| Mount {
                target: target.to_string(),
                input: None,
                selector: None,
                readonly: true,
                output: None,
                kind: MountKind::Ssh {
                    id: id.to_string(),
                    required: *required,
                    uid: 0,
                    gid: 0,
                    mode: 0o600,
                },
            })
            .collect();
        exec
    }

    fn prepare_ssh(agents: &SshAgents, exec: &ExecOp) -> Result<PreparedMounts, OpError> {
        let dir = tempfile::tempdir().unwrap();
        let store = kiln_store::Store::open(dir.path()).unwrap();
        let (locals, secrets) = (BTreeMap::new(), Secrets::new());
        let cx = test_context(&store, &locals, &secrets, agents);
        let scratch = dir.keep().join("scratch");
        prepare_mounts(&cx, exec, &[], &scratch)
    }

    #[test]
    fn a_missing_ssh_agent_is_an_error_only_when_required() {
        let exec = ssh_exec(&[("gh", "/run/buildkit/ssh_agent.0", true)], &[]);
        let error = prepare_ssh(&SshAgents::new(), &exec).err().unwrap();
        let text = error.to_string();
        assert!(
            text.contains("\"gh\"") && text.contains("--ssh gh"),
            "{text}"
        );

        // Optional: skipped, but SSH_AUTH_SOCK names the first ssh target, as BuildKit sets it.
        let exec = ssh_exec(
            &[
                ("a", "/run/buildkit/ssh_agent.0", false),
                ("b", "/b.sock", false),
            ],
            &[],
        );
        let prepared = prepare_ssh(&SshAgents::new(), &exec).unwrap();
        assert!(prepared.mounts.is_empty());
        assert_eq!(
            prepared.secret_env,
            ["SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0"]
        );
    }

    #[test]
    fn an_ssh_mount_is_a_read_only_bind_of_a_proxy_in_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
        let agents = SshAgents::from([("default".to_string(), agent.clone())]);
        let exec = ssh_exec(&[("default", "/agent", true)], &["SSH_AUTH_SOCK=/mine"]);
        let prepared = prepare_ssh(&agents, &exec).unwrap();
        match &prepared.mounts[..] {
            [
                ExtraMount::Bind {
                    source,
                    target,
                    read_only: true,
                },
            ] => {
                assert_eq!(target, Path::new("/agent"));
                assert_ne!(
                    source, &agent,
                    "the step sees a proxy, never the host socket"
                );
                assert!(source.ends_with("ssh/0.sock"), "{source:?}");
                let meta = std::fs::symlink_metadata(source).unwrap();
                assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
            }
            other => panic!("expected one read-only bind, got {other:?}"),
        }
        assert!(
            prepared.secret_env.is_empty(),
            "the step's own SSH_AUTH_SOCK wins"
        );
    }

    #[test]
    fn a_missing_bind_source_names_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        let error = find_in_root(dir.path(), "/nope", "bind", "/mnt").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("/mnt") && text.contains("/nope"), "{text}");
    }
}
