//! The op types: `Source`, `Exec`, `File` and `Merge`, each with the inputs it reads.
//!
//! An [`Op`] lists its inputs once (`inputs`, each an [`OpRef`]: another op's digest and output
//! index) and its body refers to them by position ([`InputIndex`]), as BuildKit's LLB does. That
//! split lets the solver hash "the op without its inputs" and then the cache keys of the inputs.
//!
//! Every container here is ordered (`Vec`, never a `HashMap`), so the canonical encoding — and with
//! it the op digest — is deterministic.

use serde::{Deserialize, Serialize};

use crate::digest::OpDigest;

/// One output of one op: the op's digest and which of its outputs (0 for most ops).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpRef {
    pub digest: OpDigest,
    pub output: u32,
}

impl OpRef {
    /// Output `0` of the op with `digest`.
    pub fn new(digest: OpDigest) -> OpRef {
        OpRef { digest, output: 0 }
    }
}

/// A position in [`Op::inputs`].
pub type InputIndex = u32;

/// One node of the graph: what it reads and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The outputs of other ops this op reads, referred to from `kind` by position.
    pub inputs: Vec<OpRef>,
    pub kind: OpKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Source(SourceOp),
    Exec(ExecOp),
    File(FileOp),
    Merge(MergeOp),
}

impl Op {
    /// An op with no inputs that produces `source`.
    pub fn source(source: SourceOp) -> Op {
        Op {
            inputs: Vec::new(),
            kind: OpKind::Source(source),
        }
    }

    /// How many outputs the op has: one for sources, file ops and merges; for an exec, one per
    /// mount that is marked as an output.
    pub fn output_count(&self) -> u32 {
        match &self.kind {
            OpKind::Exec(exec) => exec
                .mounts
                .iter()
                .filter_map(|mount| mount.output)
                .map(|output| output + 1)
                .max()
                .unwrap_or(0),
            OpKind::Source(_) | OpKind::File(_) | OpKind::Merge(_) => 1,
        }
    }

    /// The input positions the op's body refers to, in the order they appear (with repeats).
    pub fn referenced_inputs(&self) -> Vec<InputIndex> {
        match &self.kind {
            OpKind::Source(_) => Vec::new(),
            OpKind::Exec(exec) => exec.mounts.iter().filter_map(|mount| mount.input).collect(),
            OpKind::File(file) => {
                let mut used: Vec<InputIndex> = file.base.into_iter().collect();
                for action in &file.actions {
                    if let FileAction::Copy(copy) = action {
                        used.push(copy.src);
                    }
                }
                used
            }
            OpKind::Merge(_) => (0..self.inputs.len() as u32).collect(),
        }
    }

    /// A short name of the op's kind: `source`, `exec`, `file` or `merge`.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            OpKind::Source(_) => "source",
            OpKind::Exec(_) => "exec",
            OpKind::File(_) => "file",
            OpKind::Merge(_) => "merge",
        }
    }
}

/// A platform as `os/architecture[/variant]` parts, as image indexes name them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// Where content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceOp {
    /// The empty filesystem.
    Scratch,
    /// An image's root filesystem. `reference` is normalised (`docker.io/library/alpine:3.20`).
    Image {
        reference: String,
        platform: Option<Platform>,
    },
    /// A local directory: the build context (`name` = "context") or a named build context.
    Local {
        name: String,
        /// Only these paths (patterns) are needed; empty means everything.
        include_patterns: Vec<String>,
        exclude_patterns: Vec<String>,
        /// Paths whose symlinks must be followed when transferring.
        follow_paths: Vec<String>,
    },
    /// A file downloaded over HTTP(S), not unpacked.
    Http {
        url: String,
        /// `sha256:<hex>` the content must have.
        checksum: Option<String>,
        /// The name the file gets (else taken from the URL or the response).
        filename: Option<String>,
    },
    /// A Git repository checkout.
    Git {
        url: String,
        /// A branch, tag or commit; `None` for the default branch.
        reference: Option<String>,
        /// A sub-directory of the repository to use as the root.
        subdir: Option<String>,
        keep_git_dir: bool,
    },
}

/// A process run in a sandbox over mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOp {
    pub args: Vec<String>,
    /// `KEY=value` entries in order.
    pub env: Vec<String>,
    pub cwd: String,
    /// `user[:group]` as the Dockerfile gives it; empty means root.
    pub user: String,
    pub network: NetworkMode,
    pub security: SecurityMode,
    /// The root filesystem first (`target == "/"`), then the other mounts.
    pub mounts: Vec<Mount>,
    /// Secrets exposed as environment variables.
    pub secret_env: Vec<SecretEnv>,
    /// `HTTP_PROXY` and friends: passed to the process but left out of the op digest (as BuildKit
    /// does) so changing a proxy does not invalidate the cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_env: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// The default: for kiln, like Docker's builder, the host network.
    Sandbox,
    Host,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    Sandbox,
    Insecure,
}

/// One mount of an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub target: String,
    /// The input mounted (for bind mounts and the rootfs; the seed content for caches). `None`
    /// means an empty directory.
    pub input: Option<InputIndex>,
    /// A path inside the input to mount instead of its root.
    pub selector: Option<String>,
    pub readonly: bool,
    /// Which output of the exec this mount's final content becomes, if any.
    pub output: Option<u32>,
    pub kind: MountKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    Bind,
    Cache {
        id: String,
        sharing: CacheSharing,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    Tmpfs {
        /// Bytes; `None` for the kernel's default.
        size: Option<u64>,
    },
    /// A secret file; only its id is recorded, never its value.
    Secret {
        id: String,
        required: bool,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    /// An SSH agent socket forwarded by id.
    Ssh {
        id: String,
        required: bool,
        uid: u32,
        gid: u32,
        mode: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

/// A secret exposed to an exec as the environment variable `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEnv {
    pub name: String,
    pub id: String,
    pub required: bool,
}

/// File actions applied in order to `base` (or to an empty filesystem); the op's one output is the
/// result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOp {
    pub base: Option<InputIndex>,
    pub actions: Vec<FileAction>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAction {
    Copy(CopyAction),
    Mkdir(MkdirAction),
    Mkfile(MkfileAction),
    Rm(RmAction),
}

/// A user or group: a numeric id or a name resolved against the destination's `/etc/passwd` or
/// `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserSpec {
    Id(u32),
    Name(String),
}

/// Ownership to give created files; a missing group means the user's primary group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chown {
    pub user: Option<UserSpec>,
    pub group: Option<UserSpec>,
}

/// A file mode: octal bits, or a symbolic expression applied to each file's current mode
/// (`u+x,go-w`), as `COPY --chmod` accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Chmod {
    Octal(u32),
    Symbolic(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyAction {
    /// The input copied from.
    pub src: InputIndex,
    /// The path (or wildcard pattern) inside `src`.
    pub src_path: String,
    /// The destination path in the base; a trailing `/` means "into this directory".
    pub dest: String,
    pub chown: Option<Chown>,
    pub chmod: Option<Chmod>,
    pub follow_symlinks: bool,
    pub allow_wildcard: bool,
    pub allow_empty_wildcard: bool,
    pub create_dest_path: bool,
    /// Copy a directory's contents rather than the directory itself.
    pub dir_copy_contents: bool,
    /// Unpack a local tar archive (optionally compressed) instead of copying it.
    pub attempt_unpack: bool,
    pub include_patterns: Vec<String>,
    pub exclude_patterns: Vec<String>,
    /// Keep the source's parent directories under `dest` (`COPY --parents`).
    pub parents: bool,
}

impl CopyAction {
    /// A copy of `src_path` from input `src` to `dest` with BuildKit's defaults for a Dockerfile
    /// COPY: follow symlinks in the source path, wildcards allowed, parents of `dest` created,
    /// directory contents copied.
    pub fn new(src: InputIndex, src_path: impl Into<String>, dest: impl Into<String>) -> Self {
        CopyAction {
            src,
            src_path: src_path.into(),
            dest: dest.into(),
            chown: None,
            chmod: None,
            follow_symlinks: true,
            allow_wildcard: true,
            allow_empty_wildcard: false,
            create_dest_path: true,
            dir_copy_contents: true,
            attempt_unpack: false,
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
            parents: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkdirAction {
    pub path: String,
    pub mode: u32,
    pub make_parents: bool,
    pub owner: Option<Chown>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkfileAction {
    pub path: String,
    /// The file's content (heredocs are text).
    pub data: String,
    pub mode: u32,
    pub owner: Option<Chown>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RmAction {
    pub path: String,
    pub allow_not_found: bool,
    pub allow_wildcard: bool,
}

/// Inputs stacked in order (later ones on top) without copying: `COPY --link`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeOp {}
