//! Explicit reference bookkeeping: the `refs` table holds one row per "owner keeps target alive"
//! edge, so garbage collection is a reachability query rather than a guess.
//!
//! Roots are tagged images, cache records and leases. Blobs and layers can own further resources
//! (a manifest blob owns its config and layer blobs; a layer owns its parent layer), and prune keeps
//! everything reachable from a root that still exists.

use std::fmt;

use kiln_image::Digest;
use rusqlite::{Connection, params};

use crate::Store;
use crate::db::{TxError, parse_digest};
use crate::error::Result;

/// Something prune can delete, and therefore something that can be referenced.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// A blob in `blobs/sha256/`, by digest.
    Blob(Digest),
    /// An extracted layer in `layers/`, by chain id.
    Layer(Digest),
}

/// Something that keeps resources alive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A tagged image, by name (a root).
    Image(String),
    /// A cache record, by key (a root).
    CacheRecord(String),
    /// A lease, by id (a root while the lease exists).
    Lease(i64),
    /// A blob that refers to others (a manifest or an index).
    Blob(Digest),
    /// An extracted layer that needs others (its parent chain).
    Layer(Digest),
}

impl Resource {
    /// The `refs` table's text for this node.
    pub(crate) fn node(&self) -> String {
        match self {
            Resource::Blob(digest) => format!("blob:{digest}"),
            Resource::Layer(chain_id) => format!("layer:{chain_id}"),
        }
    }

    /// Parses a node of the `refs` table back; `None` for owner-only nodes (images, leases…).
    pub(crate) fn from_node(node: &str) -> Result<Option<Resource>, TxError> {
        if let Some(digest) = node.strip_prefix("blob:") {
            Ok(Some(Resource::Blob(parse_digest(digest)?)))
        } else if let Some(chain_id) = node.strip_prefix("layer:") {
            Ok(Some(Resource::Layer(parse_digest(chain_id)?)))
        } else {
            Ok(None)
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Blob(digest) => write!(f, "blob {digest}"),
            Resource::Layer(chain_id) => write!(f, "layer {chain_id}"),
        }
    }
}

impl Owner {
    /// The `refs` table's text for this node. Blob and layer owners share the text of the
    /// resource, which is what links edges into chains.
    pub(crate) fn node(&self) -> String {
        match self {
            Owner::Image(name) => format!("image:{name}"),
            Owner::CacheRecord(key) => format!("cache:{key}"),
            Owner::Lease(id) => format!("lease:{id}"),
            Owner::Blob(digest) => Resource::Blob(digest.clone()).node(),
            Owner::Layer(chain_id) => Resource::Layer(chain_id.clone()).node(),
        }
    }
}

/// Adds the edge `owner → target` (idempotent).
pub(crate) fn add_ref(conn: &Connection, owner: &Owner, target: &Resource) -> Result<(), TxError> {
    conn.execute(
        "INSERT OR IGNORE INTO refs (owner, target) VALUES (?1, ?2)",
        params![owner.node(), target.node()],
    )?;
    Ok(())
}

/// Removes every edge out of `owner`.
pub(crate) fn clear_refs(conn: &Connection, owner: &Owner) -> Result<(), TxError> {
    conn.execute("DELETE FROM refs WHERE owner = ?1", params![owner.node()])?;
    Ok(())
}

/// The resources `owner` references directly.
pub(crate) fn refs_of(conn: &Connection, owner: &Owner) -> Result<Vec<Resource>, TxError> {
    let mut statement = conn.prepare("SELECT target FROM refs WHERE owner = ?1 ORDER BY target")?;
    let rows = statement.query_map(params![owner.node()], |row| row.get::<_, String>(0))?;
    let mut resources = Vec::new();
    for row in rows {
        if let Some(resource) = Resource::from_node(&row?)? {
            resources.push(resource);
        }
    }
    Ok(resources)
}

impl Store {
    /// Records that `owner` keeps `target` alive (e.g. an index blob → its manifest blobs). Tags,
    /// manifests, layers, cache records and leases record their own edges; this is for the rest.
    ///
    /// # Errors
    /// [`crate::StoreError::Db`] when the edge cannot be written.
    pub fn add_reference(&self, owner: &Owner, target: &Resource) -> Result<()> {
        self.db()
            .write("add reference", |tx| add_ref(tx, owner, target))
    }

    /// Removes every reference held by `owner`.
    ///
    /// # Errors
    /// [`crate::StoreError::Db`] when the edges cannot be deleted.
    pub fn clear_references(&self, owner: &Owner) -> Result<()> {
        self.db()
            .write("clear references", |tx| clear_refs(tx, owner))
    }

    /// The resources `owner` references directly, sorted.
    ///
    /// # Errors
    /// [`crate::StoreError::Db`] on a database failure, [`crate::StoreError::InvalidRecord`] on a damaged row.
    pub fn references_of(&self, owner: &Owner) -> Result<Vec<Resource>> {
        self.db()
            .read("list references", |conn| refs_of(conn, owner))
    }
}
