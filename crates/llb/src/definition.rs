//! `Definition`: the ops of one build in dependency order, deduplicated by digest, with per-op
//! metadata kept beside (not inside) the ops so it never changes a digest.
//!
//! Ops can only be added once their inputs are present ([`DefinitionBuilder::add`]) and a
//! deserialised definition is checked the same way ([`Definition::validate`]): every input is
//! defined earlier, so the list is a topological order and cannot contain a cycle.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::digest::OpDigest;
use crate::op::{Op, OpKind, OpRef};

/// What a user is shown about an op; not part of its digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpMetadata {
    /// E.g. `[stage-1 2/5] RUN make`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where in the Dockerfile the op comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<SourceLocation>,
    /// Run the op even when a cached result exists (`--no-cache`, `--no-cache-filter`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_cache: bool,
}

/// 1-based inclusive line range in a named file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceLocation {
    pub file: String,
    pub start_line: usize,
    pub end_line: usize,
}

/// Why a definition (or an op added to one) is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DefinitionError {
    #[error(
        "op {op:?} ({kind}) reads {input:?}, which is not defined before it (missing, or a cycle)"
    )]
    InputNotDefined {
        op: OpDigest,
        kind: &'static str,
        input: OpDigest,
    },
    #[error("op {op:?} reads output {output} of {input:?}, which has only {count} output(s)")]
    OutputOutOfRange {
        op: OpDigest,
        input: OpDigest,
        output: u32,
        count: u32,
    },
    #[error("op {op:?} refers to input #{index} but has only {count} input(s)")]
    InputIndexOutOfRange {
        op: OpDigest,
        index: u32,
        count: usize,
    },
    #[error("exec op {0:?} has no root filesystem mount (target \"/\")")]
    ExecWithoutRootfs(OpDigest),
    #[error("op {0:?} appears twice")]
    DuplicateOp(OpDigest),
    #[error("op stated as {stated} has digest {computed}")]
    DigestMismatch {
        stated: OpDigest,
        computed: OpDigest,
    },
    #[error("metadata given for {0:?}, which is not an op of the definition")]
    MetadataForUnknownOp(OpDigest),
}

/// The ops of one build, in dependency order, each present once.
#[derive(Debug, Clone, Default)]
pub struct Definition {
    ops: Vec<Op>,
    digests: Vec<OpDigest>,
    positions: HashMap<OpDigest, usize>,
    metadata: BTreeMap<OpDigest, OpMetadata>,
}

impl PartialEq for Definition {
    fn eq(&self, other: &Self) -> bool {
        self.digests == other.digests && self.metadata == other.metadata
    }
}

impl Eq for Definition {}

impl Definition {
    /// The ops in dependency order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no ops.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// `(digest, op, metadata)` in dependency order.
    pub fn iter(&self) -> impl Iterator<Item = (&OpDigest, &Op, Option<&OpMetadata>)> {
        self.digests
            .iter()
            .zip(&self.ops)
            .map(|(digest, op)| (digest, op, self.metadata.get(digest)))
    }

    /// The op with `digest`.
    pub fn get(&self, digest: &OpDigest) -> Option<&Op> {
        self.positions
            .get(digest)
            .map(|&position| &self.ops[position])
    }

    /// The metadata recorded for `digest`.
    pub fn metadata(&self, digest: &OpDigest) -> Option<&OpMetadata> {
        self.metadata.get(digest)
    }

    /// Whether the op with `digest` is present.
    pub fn contains(&self, digest: &OpDigest) -> bool {
        self.positions.contains_key(digest)
    }

    /// Only the ops `roots` depend on (and the roots), in the same order.
    pub fn restricted_to(&self, roots: &[OpRef]) -> Definition {
        let mut needed: HashSet<&OpDigest> = roots.iter().map(|root| &root.digest).collect();
        // Walking backwards over a topological order visits each op after everything that reads it.
        for (digest, op) in self.digests.iter().zip(&self.ops).rev() {
            if needed.contains(digest) {
                needed.extend(op.inputs.iter().map(|input| &input.digest));
            }
        }
        let mut builder = DefinitionBuilder::new();
        for (digest, op, metadata) in self.iter() {
            if needed.contains(digest) {
                builder.push_checked(digest.clone(), op.clone(), metadata.cloned());
            }
        }
        builder.build()
    }

    /// Checks the invariants a [`DefinitionBuilder`] guarantees; used for definitions read from
    /// JSON.
    ///
    /// # Errors
    /// The first violation found: an input not defined earlier (or a cycle), an output or input
    /// index out of range, an exec without a root mount, or a duplicated op.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        let mut seen: HashMap<&OpDigest, &Op> = HashMap::new();
        for (digest, op) in self.digests.iter().zip(&self.ops) {
            check_op(digest, op, |input| seen.get(input).copied())?;
            if seen.insert(digest, op).is_some() {
                return Err(DefinitionError::DuplicateOp(digest.clone()));
            }
        }
        if let Some(unknown) = self.metadata.keys().find(|d| !seen.contains_key(d)) {
            return Err(DefinitionError::MetadataForUnknownOp(unknown.clone()));
        }
        Ok(())
    }

    /// The definition as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("definitions always serialise to JSON")
    }
}

/// Checks `op`'s inputs against the ops defined so far (`lookup`) and its internal references.
fn check_op<'a>(
    digest: &OpDigest,
    op: &Op,
    lookup: impl Fn(&OpDigest) -> Option<&'a Op>,
) -> Result<(), DefinitionError> {
    for input in &op.inputs {
        let Some(source) = lookup(&input.digest) else {
            return Err(DefinitionError::InputNotDefined {
                op: digest.clone(),
                kind: op.kind_name(),
                input: input.digest.clone(),
            });
        };
        let count = source.output_count();
        if input.output >= count {
            return Err(DefinitionError::OutputOutOfRange {
                op: digest.clone(),
                input: input.digest.clone(),
                output: input.output,
                count,
            });
        }
    }
    if let Some(&index) = op
        .referenced_inputs()
        .iter()
        .find(|&&index| index as usize >= op.inputs.len())
    {
        return Err(DefinitionError::InputIndexOutOfRange {
            op: digest.clone(),
            index,
            count: op.inputs.len(),
        });
    }
    if let OpKind::Exec(exec) = &op.kind {
        if !exec.mounts.iter().any(|mount| mount.target == "/") {
            return Err(DefinitionError::ExecWithoutRootfs(digest.clone()));
        }
    }
    Ok(())
}

/// Adds ops one at a time, deduplicating equal ops and refusing ops whose inputs are unknown.
#[derive(Debug, Default)]
pub struct DefinitionBuilder {
    definition: Definition,
}

impl DefinitionBuilder {
    pub fn new() -> Self {
        DefinitionBuilder::default()
    }

    /// Adds `op` (or finds the equal op already added) and returns a reference to its output 0.
    /// When the op was already present its first metadata is kept; fields it lacked are filled
    /// from `metadata`.
    ///
    /// # Errors
    /// [`DefinitionError`] when an input is not in the definition yet, refers to an output the
    /// input op does not have, the op refers to an input position it does not list, or an exec has
    /// no root mount.
    pub fn add(&mut self, op: Op, metadata: OpMetadata) -> Result<OpRef, DefinitionError> {
        let digest = OpDigest::of(&op);
        if !self.definition.contains(&digest) {
            check_op(&digest, &op, |input| self.definition.get(input))?;
        }
        self.push_checked(digest.clone(), op, Some(metadata));
        Ok(OpRef::new(digest))
    }

    /// Whether an op with `digest` was added.
    pub fn contains(&self, digest: &OpDigest) -> bool {
        self.definition.contains(digest)
    }

    /// The op with `digest`, if added.
    pub fn get(&self, digest: &OpDigest) -> Option<&Op> {
        self.definition.get(digest)
    }

    fn push_checked(&mut self, digest: OpDigest, op: Op, metadata: Option<OpMetadata>) {
        let definition = &mut self.definition;
        if !definition.positions.contains_key(&digest) {
            definition
                .positions
                .insert(digest.clone(), definition.ops.len());
            definition.ops.push(op);
            definition.digests.push(digest.clone());
        }
        if let Some(metadata) = metadata {
            let existing = definition.metadata.entry(digest).or_default();
            if existing.description.is_none() {
                existing.description = metadata.description;
            }
            if existing.location.is_none() {
                existing.location = metadata.location;
            }
            existing.ignore_cache |= metadata.ignore_cache;
        }
    }

    /// The finished definition.
    pub fn build(self) -> Definition {
        self.definition
    }
}

/// The JSON form: one entry per op with its digest (checked on load) and metadata.
#[derive(Serialize, Deserialize)]
struct DefinitionJson {
    ops: Vec<OpEntryJson>,
}

#[derive(Serialize, Deserialize)]
struct OpEntryJson {
    digest: OpDigest,
    op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<OpMetadata>,
}

impl Serialize for Definition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let json = DefinitionJson {
            ops: self
                .iter()
                .map(|(digest, op, metadata)| OpEntryJson {
                    digest: digest.clone(),
                    op: op.clone(),
                    metadata: metadata.cloned(),
                })
                .collect(),
        };
        json.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Definition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = DefinitionJson::deserialize(deserializer)?;
        Definition::try_from(json).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<DefinitionJson> for Definition {
    type Error = DefinitionError;

    fn try_from(json: DefinitionJson) -> Result<Self, Self::Error> {
        let mut definition = Definition::default();
        for entry in json.ops {
            let computed = OpDigest::of(&entry.op);
            if computed != entry.digest {
                return Err(DefinitionError::DigestMismatch {
                    stated: entry.digest,
                    computed,
                });
            }
            if definition.positions.contains_key(&computed) {
                return Err(DefinitionError::DuplicateOp(computed));
            }
            definition
                .positions
                .insert(computed.clone(), definition.ops.len());
            definition.ops.push(entry.op);
            if let Some(metadata) = entry.metadata {
                definition.metadata.insert(computed.clone(), metadata);
            }
            definition.digests.push(computed);
        }
        definition.validate()?;
        Ok(definition)
    }
}
