//! Op digests: sha256 of an op's canonical encoding.
//!
//! The canonical encoding is the compact `serde_json` form of the op (fixed field order, ordered
//! containers only) with the fields that must not affect identity cleared — today only an exec's
//! proxy environment. Metadata (descriptions, locations) lives outside the op, so it never reaches
//! the digest.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::op::{Op, OpKind};

/// The sha256 of an op's canonical encoding.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpDigest {
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid op digest {0:?}: expected sha256:<64 lowercase hex characters>")]
pub struct OpDigestParseError(pub String);

impl OpDigest {
    /// The digest of `op`.
    pub fn of(op: &Op) -> OpDigest {
        OpDigest::of_bytes(&canonical_encoding(op))
    }

    /// The digest of `op` with its inputs left out: what the solver combines with the cache keys of
    /// the inputs.
    pub fn of_op_without_inputs(op: &Op) -> OpDigest {
        let mut bare = op.clone();
        bare.inputs.clear();
        OpDigest::of(&bare)
    }

    fn of_bytes(bytes: &[u8]) -> OpDigest {
        OpDigest {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The 64 hex characters.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex characters, for listings.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

/// The bytes an op's digest is computed over.
pub fn canonical_encoding(op: &Op) -> Vec<u8> {
    let mut canonical = op.clone();
    if let OpKind::Exec(exec) = &mut canonical.kind {
        exec.proxy_env.clear();
    }
    // Serialising these derive-only types to JSON cannot fail: there are no maps with non-string
    // keys and no custom serialisers that error.
    serde_json::to_vec(&canonical).expect("op types always serialise to JSON")
}

impl FromStr for OpDigest {
    type Err = OpDigestParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = |hex: &str| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        match s.strip_prefix("sha256:") {
            Some(hex) if valid(hex) => Ok(OpDigest {
                hex: hex.to_string(),
            }),
            _ => Err(OpDigestParseError(s.to_string())),
        }
    }
}

impl fmt::Display for OpDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for OpDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpDigest({})", self.short())
    }
}

impl Serialize for OpDigest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OpDigest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
