//! Cache keys and the components they are made of.
//!
//! `key(op) = sha256("kiln.cache.key.v1" ‖ op digest without inputs ‖ identity of each input ‖
//! content checksum of each local read)`:
//!
//! - The op digest without inputs covers every field of the op (command, env — so build args that
//!   reach a RUN —, user, cwd, mounts, COPY options). Secrets appear only by id, never by value;
//!   proxy variables are left out of the digest by kiln-llb.
//! - A root-filesystem input is identified by the chain id of its result (`chain:<id>`, or
//!   `chain:empty` for scratch), so identical bytes hit whatever produced them.
//! - A local source input is identified by its name only; what the op reads from it enters as
//!   [`ContentComponent`]s: one per COPY (the checksum of exactly the paths it selects after
//!   `.dockerignore` and `--exclude`), or one for the whole visible context when the op reads the
//!   local source another way (a bind mount).
//!
//! The components are kept in the cache record so that a later miss can be explained.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_context::{
    ContentChecksum, IgnorePatterns, ResolvedSource, SourceError, SourceOptions, StatCache,
    checksum, resolve_sources,
};
use kiln_image::Digest;
use kiln_llb::{ExecOp, FileAction, Op, OpDigest, OpKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::ops::LocalSource;

/// Why a key could not be computed (the op then runs without a cache lookup or record, and its
/// own execution reports the problem to the user).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no local directory was given for the build context {0:?}")]
    MissingLocal(String),
    #[error("invalid .dockerignore pattern of the build context {name:?}: {source}")]
    Ignore {
        name: String,
        #[source]
        source: kiln_context::PatternError,
    },
    #[error("resolving {source_path:?} in the build context {name:?}: {source}")]
    Resolve {
        name: String,
        source_path: String,
        #[source]
        source: SourceError,
    },
    #[error("checksumming {what}: {source}")]
    Checksum {
        what: String,
        #[source]
        source: kiln_context::ChecksumError,
    },
}

/// What kind of result an input is, for explanations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// An image's root filesystem (`FROM image`).
    Image,
    /// The empty filesystem.
    Scratch,
    /// The result of another step.
    Step,
    /// A local directory (the build context or a named context).
    Local,
}

/// One input of an op as it enters the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputComponent {
    pub kind: InputKind,
    /// `chain:<chain id>`, `chain:empty` or `local:<name>`.
    pub identity: String,
    /// The input step's own cache key, when it has one (kept for explanations, not keyed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The input step's description (`[2/4] RUN make`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// For a local input: the `.dockerignore` patterns plus the source's own excludes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_excludes: Vec<String>,
}

/// The checksum of what an op reads from one local input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentComponent {
    /// What is read, e.g. `COPY src/ from context`.
    pub reads: String,
    pub checksum: ContentChecksum,
}

/// The op's fields that explanations talk about (the digest covers all of them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpSummary {
    /// `exec`, `file`, `merge` or `source`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `KEY=value` in order (build args used by a RUN arrive here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cwd: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
}

impl OpSummary {
    /// The summary of `op`.
    pub fn of(op: &Op) -> OpSummary {
        match &op.kind {
            OpKind::Exec(exec) => OpSummary {
                kind: "exec".into(),
                args: exec.args.clone(),
                env: exec.env.clone(),
                cwd: exec.cwd.clone(),
                user: exec.user.clone(),
            },
            _ => OpSummary {
                kind: op.kind_name().to_string(),
                ..OpSummary::default()
            },
        }
    }
}

/// Everything a key is computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyComponents {
    /// sha256 hex of the op without its inputs.
    pub op_digest: String,
    pub op: OpSummary,
    /// How new layers are written (compression, `SOURCE_DATE_EPOCH`): they change the bytes.
    #[serde(default)]
    pub layer_settings: String,
    pub inputs: Vec<InputComponent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contents: Vec<ContentComponent>,
}

impl KeyComponents {
    /// The cache key: `kiln.v1:<sha256 hex>`.
    pub fn key(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"kiln.cache.key.v1\n");
        hasher.update(format!("op\0{}\n", self.op_digest).as_bytes());
        hasher.update(format!("layers\0{}\n", self.layer_settings).as_bytes());
        for input in &self.inputs {
            hasher.update(format!("input\0{}\n", input.identity).as_bytes());
        }
        for content in &self.contents {
            hasher.update(
                format!("reads\0{}\0{}\n", content.reads, content.checksum.digest).as_bytes(),
            );
        }
        format!("kiln.v1:{}", Digest::from_hasher(hasher).hex())
    }
}

/// The identity of a layer chain's result for keys: its top chain id, or `chain:empty`.
pub fn chain_identity(top_chain_id: Option<&Digest>) -> String {
    match top_chain_id {
        Some(id) => format!("chain:{id}"),
        None => "chain:empty".to_string(),
    }
}

/// Computes the components of `op`'s key from its inputs (in the order of `op.inputs`).
/// Local inputs are checksummed from `locals` (the user's directories, with their `.dockerignore`
/// applied as the staged copy would), using `stat_cache` to skip reading unchanged files.
///
/// # Errors
/// [`KeyError`] when a local directory is missing, a pattern is invalid, or a COPY source cannot
/// be resolved or read.
pub fn compute_key(
    op: &Op,
    layer_settings: &str,
    inputs: Vec<InputComponent>,
    locals: &BTreeMap<String, LocalSource>,
    stat_cache: &dyn StatCache,
) -> Result<KeyComponents, KeyError> {
    let mut contents = Vec::new();
    for (index, input) in inputs.iter().enumerate() {
        if input.kind != InputKind::Local {
            continue;
        }
        let name = input
            .identity
            .strip_prefix("local:")
            .unwrap_or(&input.identity);
        let local = locals
            .get(name)
            .ok_or_else(|| KeyError::MissingLocal(name.to_string()))?;
        let ignore =
            IgnorePatterns::compile(&input.local_excludes).map_err(|source| KeyError::Ignore {
                name: name.to_string(),
                source,
            })?;
        let reads = local_reads(op, index as u32);
        if reads.is_empty() {
            // Read another way (a bind mount, a file op base): the whole visible context.
            let read = LocalRead {
                label: format!("the build context {name}"),
                sources: vec!["/".to_string()],
                excludes: Vec::new(),
                follow_symlinks: false,
                allow_wildcards: false,
                allow_empty: false,
            };
            contents.push(checksum_read(&local.dir, name, &ignore, &read, stat_cache)?);
        }
        for read in &reads {
            contents.push(checksum_read(&local.dir, name, &ignore, read, stat_cache)?);
        }
    }
    Ok(KeyComponents {
        op_digest: OpDigest::of_op_without_inputs(op).hex().to_string(),
        op: OpSummary::of(op),
        layer_settings: layer_settings.to_string(),
        inputs,
        contents,
    })
}

/// One COPY's selection from a local input.
struct LocalRead {
    label: String,
    sources: Vec<String>,
    excludes: Vec<String>,
    follow_symlinks: bool,
    allow_wildcards: bool,
    allow_empty: bool,
}

/// The COPY actions of a file op (or the `RUN --mount`s of an exec) that read input `index`.
fn local_reads(op: &Op, index: u32) -> Vec<LocalRead> {
    if let OpKind::Exec(exec) = &op.kind {
        return mount_reads(exec, index);
    }
    let OpKind::File(file) = &op.kind else {
        return Vec::new();
    };
    if file.base == Some(index) {
        return Vec::new();
    }
    file.actions
        .iter()
        .filter_map(|action| match action {
            FileAction::Copy(copy) if copy.src == index => Some(copy),
            _ => None,
        })
        .map(|copy| {
            let sources = if copy.include_patterns.is_empty() {
                vec![copy.src_path.clone()]
            } else {
                copy.include_patterns
                    .iter()
                    .map(|pattern| format!("{}/{}", copy.src_path.trim_end_matches('/'), pattern))
                    .collect()
            };
            LocalRead {
                label: format!(
                    "{} {} -> {}",
                    if copy.attempt_unpack { "ADD" } else { "COPY" },
                    sources.join(" "),
                    copy.dest
                ),
                sources,
                excludes: copy.exclude_patterns.clone(),
                follow_symlinks: copy.follow_symlinks,
                allow_wildcards: copy.allow_wildcard,
                allow_empty: copy.allow_empty_wildcard,
            }
        })
        .collect()
}

/// The `RUN --mount`s (bind, or a cache's seed) that read input `index`: each is keyed by exactly
/// the path it selects. What a cache mount holds is never part of a key, nor is a secret.
fn mount_reads(exec: &ExecOp, index: u32) -> Vec<LocalRead> {
    exec.mounts
        .iter()
        .filter(|mount| mount.input == Some(index) && mount.target != "/")
        .map(|mount| {
            let source = mount.selector.clone().unwrap_or_else(|| "/".to_string());
            LocalRead {
                label: format!("RUN --mount source={source} -> {}", mount.target),
                sources: vec![source],
                excludes: Vec::new(),
                follow_symlinks: true,
                allow_wildcards: false,
                allow_empty: false,
            }
        })
        .collect()
}

fn checksum_read(
    root: &Path,
    name: &str,
    ignore: &IgnorePatterns,
    read: &LocalRead,
    stat_cache: &dyn StatCache,
) -> Result<ContentComponent, KeyError> {
    let options = SourceOptions {
        ignore: Some(ignore),
        follow_symlinks: read.follow_symlinks,
        allow_wildcards: read.allow_wildcards,
    };
    let mut sources: Vec<ResolvedSource> = Vec::new();
    for source in &read.sources {
        match resolve_sources(root, source, &options) {
            Ok(found) => sources.extend(found),
            Err(SourceError::NotFound { .. }) if read.allow_empty => {}
            Err(error) => {
                return Err(KeyError::Resolve {
                    name: name.to_string(),
                    source_path: source.clone(),
                    source: error,
                });
            }
        }
    }
    let checksum =
        checksum(root, &sources, Some(ignore), &read.excludes, stat_cache).map_err(|source| {
            KeyError::Checksum {
                what: read.label.clone(),
                source,
            }
        })?;
    Ok(ContentComponent {
        reads: read.label.clone(),
        checksum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_context::MemoryStatCache;
    use kiln_llb::{CopyAction, FileOp};

    fn copy_op(src: &str) -> Op {
        Op {
            inputs: Vec::new(),
            kind: OpKind::File(FileOp {
                base: Some(0),
                actions: vec![FileAction::Copy(CopyAction::new(1, src, "/app/"))],
            }),
        }
    }

    fn inputs() -> Vec<InputComponent> {
        vec![
            InputComponent {
                kind: InputKind::Scratch,
                identity: chain_identity(None),
                key: None,
                description: None,
                local_excludes: Vec::new(),
            },
            InputComponent {
                kind: InputKind::Local,
                identity: "local:context".into(),
                key: None,
                description: None,
                local_excludes: vec!["ignored.txt".into()],
            },
        ]
    }

    fn locals(dir: &Path) -> BTreeMap<String, LocalSource> {
        BTreeMap::from([(
            "context".to_string(),
            LocalSource {
                dir: dir.to_path_buf(),
                excludes: Vec::new(),
            },
        )])
    }

    #[test]
    fn a_copy_is_keyed_by_the_paths_it_selects_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/main.rs"), "fn main() {}").unwrap();
        std::fs::write(dir.path().join("other.txt"), "a").unwrap();
        std::fs::write(dir.path().join("ignored.txt"), "a").unwrap();
        let cache = MemoryStatCache::new();
        let op = copy_op("src");
        let key = |cache: &MemoryStatCache| {
            compute_key(&op, "", inputs(), &locals(dir.path()), cache)
                .unwrap()
                .key()
        };
        let first = key(&cache);
        std::fs::write(dir.path().join("other.txt"), "b").unwrap();
        assert_eq!(key(&cache), first, "an unrelated file changed");
        std::fs::write(dir.path().join("src/main.rs"), "fn main() { }").unwrap();
        assert_ne!(key(&cache), first, "a selected file changed");

        // The whole context is read: an ignored file does not count, another one does.
        let whole = copy_op(".");
        let whole_key = || {
            compute_key(&whole, "", inputs(), &locals(dir.path()), &cache)
                .unwrap()
                .key()
        };
        let before = whole_key();
        std::fs::write(dir.path().join("ignored.txt"), "changed").unwrap();
        assert_eq!(whole_key(), before);
        std::fs::write(dir.path().join("other.txt"), "c").unwrap();
        assert_ne!(whole_key(), before);
    }

    #[test]
    fn files_the_dockerignore_excludes_below_the_copied_dir_never_change_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["tree/a", "tree/node_modules/pkg", "tree/b"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        for file in [
            "tree/a/main.rs",
            "tree/a/scratch.tmp",
            "tree/b/keep.tmp",
            "tree/node_modules/pkg/index.js",
        ] {
            std::fs::write(dir.path().join(file), "1").unwrap();
        }
        let mut ignoring = inputs();
        ignoring[1].local_excludes = vec![
            "**/*.tmp".into(),
            "tree/node_modules".into(),
            "!**/keep.tmp".into(),
        ];
        let cache = MemoryStatCache::new();
        let key = || {
            compute_key(
                &copy_op("tree"),
                "",
                ignoring.clone(),
                &locals(dir.path()),
                &cache,
            )
            .unwrap()
        };
        let first = key();
        let paths: Vec<&str> = first.contents[0]
            .checksum
            .entries
            .iter()
            .map(|entry| entry.path.as_str())
            .collect();
        assert_eq!(
            paths,
            vec![
                "tree",
                "tree/a",
                "tree/a/main.rs",
                "tree/b",
                "tree/b/keep.tmp"
            ]
        );
        for excluded in ["tree/a/scratch.tmp", "tree/node_modules/pkg/index.js"] {
            std::fs::write(dir.path().join(excluded), "2").unwrap();
            assert_eq!(key().key(), first.key(), "{excluded} is excluded");
        }
        std::fs::write(dir.path().join("tree/b/keep.tmp"), "2").unwrap();
        assert_ne!(key().key(), first.key(), "keep.tmp is re-included");
    }

    #[test]
    fn the_key_depends_on_input_results_not_on_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "a").unwrap();
        let op = copy_op("a");
        let mut with_key = inputs();
        with_key[0].key = Some("kiln.v1:aaaa".into());
        let cache = MemoryStatCache::new();
        let plain = compute_key(&op, "", inputs(), &locals(dir.path()), &cache).unwrap();
        let keyed = compute_key(&op, "", with_key, &locals(dir.path()), &cache).unwrap();
        assert_eq!(plain.key(), keyed.key());
        let mut other = inputs();
        other[0].identity = chain_identity(Some(&Digest::of(b"layer")));
        let changed = compute_key(&op, "", other, &locals(dir.path()), &cache).unwrap();
        assert_ne!(plain.key(), changed.key());
    }

    #[test]
    fn a_bind_mount_is_keyed_by_exactly_what_it_selects() {
        use kiln_llb::{Mount, MountKind, NetworkMode, SecretEnv, SecurityMode};
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), "a").unwrap();
        std::fs::write(dir.path().join("other"), "o").unwrap();
        let mount = |target: &str, input, selector: Option<&str>, kind| Mount {
            target: target.into(),
            input,
            selector: selector.map(str::to_string),
            readonly: true,
            output: None,
            kind,
        };
        let op = Op {
            inputs: Vec::new(),
            kind: OpKind::Exec(ExecOp {
                args: vec!["true".into()],
                env: Vec::new(),
                cwd: "/".into(),
                user: String::new(),
                network: NetworkMode::Sandbox,
                security: SecurityMode::Sandbox,
                mounts: vec![
                    mount("/", Some(0), None, MountKind::Bind),
                    mount("/src", Some(1), Some("/sub"), MountKind::Bind),
                ],
                secret_env: vec![SecretEnv {
                    name: "TOKEN".into(),
                    id: "token".into(),
                    required: true,
                }],
                proxy_env: Vec::new(),
            }),
        };
        let cache = MemoryStatCache::new();
        let key = || {
            compute_key(&op, "", inputs(), &locals(dir.path()), &cache)
                .unwrap()
                .key()
        };
        let first = key();
        std::fs::write(dir.path().join("other"), "changed").unwrap();
        assert_eq!(key(), first, "a file outside the mount's source changed");
        std::fs::write(dir.path().join("sub/a"), "changed").unwrap();
        assert_ne!(key(), first, "a file the mount shows changed");
    }

    #[test]
    fn a_missing_copy_source_is_a_key_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = MemoryStatCache::new();
        let error = compute_key(&copy_op("nope"), "", inputs(), &locals(dir.path()), &cache);
        assert!(matches!(error, Err(KeyError::Resolve { .. })), "{error:?}");
    }
}
