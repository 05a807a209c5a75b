//! Leases: temporary roots that protect in-flight work (a pull, a running container's layers) from
//! prune until the work is done.
//!
//! A lease is a database row plus reference edges, owned by a [`Lease`] guard that deletes both on
//! drop. Each lease records the `tmp/` session of the process that made it, so a lease left by a
//! killed process is recognised as dead (its session lock is free) and prune removes it.

use rusqlite::params;

use crate::Store;
use crate::db::unix_now_ns;
use crate::error::Result;
use crate::refs::{Owner, Resource, add_ref, clear_refs};

/// A live lease; deleted (with its references) on drop.
#[derive(Debug)]
pub struct Lease {
    store: Store,
    id: i64,
    kind: String,
    released: bool,
}

/// A lease as listed from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease id.
    pub id: i64,
    /// What the lease is for (free text, e.g. `pull` or `run`).
    pub kind: String,
    /// The `tmp/` session of the process holding it.
    pub session: String,
    /// When it was created, ns since the epoch.
    pub created_ns: i64,
}

impl Store {
    /// Creates a lease of `kind`. Resources attached with [`Lease::protect`] survive prune until the
    /// lease is dropped (or its process dies).
    ///
    /// # Errors
    /// [`crate::StoreError::Db`] on a database failure.
    pub fn create_lease(&self, kind: &str) -> Result<Lease> {
        let session = self.session().name().to_string();
        let id = self.db().write("create lease", |tx| {
            tx.execute(
                "INSERT INTO leases (kind, session, created_ns) VALUES (?1, ?2, ?3)",
                params![kind, session, unix_now_ns()],
            )?;
            Ok(tx.last_insert_rowid())
        })?;
        Ok(Lease {
            store: self.clone(),
            id,
            kind: kind.to_string(),
            released: false,
        })
    }

    /// Every lease in the database, live or not, by id.
    ///
    /// # Errors
    /// [`crate::StoreError::Db`] on a database failure.
    pub fn list_leases(&self) -> Result<Vec<LeaseInfo>> {
        self.db().read("list leases", |conn| {
            let mut statement =
                conn.prepare("SELECT id, kind, session, created_ns FROM leases ORDER BY id")?;
            let rows = statement.query_map([], |row| {
                Ok(LeaseInfo {
                    id: row.get(0)?,
                    kind: row.get(1)?,
                    session: row.get(2)?,
                    created_ns: row.get(3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }
}

impl Lease {
    /// The lease id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// What the lease is for.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Protects `resource` from prune while this lease lives. The resource need not exist yet:
    /// protect first, then write, and prune can never slip in between.
    ///
    /// # Errors
    /// [`crate::StoreError::Db`] on a database failure.
    pub fn protect(&self, resource: &Resource) -> Result<()> {
        self.store.db().write("protect resource with lease", |tx| {
            add_ref(tx, &Owner::Lease(self.id), resource)
        })
    }

    /// Deletes the lease now, reporting failure (drop does the same but can only log).
    ///
    /// # Errors
    /// [`crate::StoreError::Db`] on a database failure; the lease then stays until a prune finds
    /// its process gone.
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        delete_lease(&self.store, self.id)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released
            && let Err(e) = delete_lease(&self.store, self.id)
        {
            tracing::warn!(lease = self.id, error = %e, "could not delete lease; prune removes it once this process exits");
        }
    }
}

fn delete_lease(store: &Store, id: i64) -> Result<()> {
    store.db().write("delete lease", |tx| {
        tx.execute("DELETE FROM leases WHERE id = ?1", params![id])?;
        clear_refs(tx, &Owner::Lease(id))
    })
}
