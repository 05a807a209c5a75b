//! Garbage collection: delete the blobs and layer directories nothing references.
//!
//! Prune is a reachability query over the `refs` table. The roots are tagged images, cache records
//! and live leases; everything reachable from a root is kept; every other blob file and layer
//! directory on disk is deleted — including ones the database never heard of (left by a crash
//! between a rename and its database record). The database changes are one transaction and the
//! files are removed only after it commits, so a crash mid-prune leaves at worst unreferenced
//! files, which the next prune finds.
//!
//! Prune holds the store lock exclusively, so it never runs while a build (holding the lock
//! shared) has written content it has not referenced yet.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use kiln_image::Digest;
use rusqlite::params;

use crate::Store;
use crate::db::{TxError, parse_digest, unix_now_ns};
use crate::error::{Result, StoreError, io_err};
use crate::lock::{self, LockMode};
use crate::session::{self, remove_any};

/// What to prune besides unreferenced content.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Report what would be removed without removing anything.
    pub dry_run: bool,
    /// Fail with [`StoreError::Busy`] instead of waiting for running builds to finish.
    pub no_wait: bool,
    /// Also delete cache records not used for this long (`Some(Duration::ZERO)`: all of them),
    /// which releases the layers and blobs only they kept alive.
    pub cache_unused_for: Option<Duration>,
    /// Also empty the `RUN --mount=type=cache` directories.
    pub cache_mounts: bool,
}

/// What a prune removed (or, for a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Blobs deleted, by digest.
    pub removed_blobs: Vec<Digest>,
    /// Extracted layers deleted, by chain id.
    pub removed_layers: Vec<Digest>,
    /// Directories in `layers/` that no database row named (left by crashes).
    pub removed_orphan_layer_dirs: usize,
    /// Cache records deleted because of [`PruneOptions::cache_unused_for`].
    pub removed_cache_records: usize,
    /// Leases deleted because the process holding them is gone.
    pub removed_stale_leases: usize,
    /// Cache mount directories emptied.
    pub removed_cache_mounts: usize,
    /// Bytes of file content removed (apparent sizes).
    pub bytes_freed: u64,
}

/// The database's verdict, applied to the filesystem after the transaction.
struct Plan {
    blob_files: Vec<Digest>,
    layer_rows: Vec<(i64, Digest)>,
    orphan_layer_dirs: Vec<String>,
    cache_records: usize,
    stale_leases: usize,
}

impl Store {
    /// Deletes every blob and layer no image, manifest, cache record or live lease references.
    /// Takes the store lock exclusively: do not call it while this process holds
    /// [`Store::lock_shared`].
    ///
    /// # Errors
    /// [`StoreError::Busy`] with `no_wait` while builds run; [`StoreError::Db`] on a database
    /// failure (nothing is deleted); [`StoreError::Io`] when a file cannot be removed (the
    /// database already forgot it; the next prune retries the file).
    pub fn prune(&self, options: &PruneOptions) -> Result<PruneReport> {
        let _exclusive = lock::acquire(
            &self.layout().lock_path(),
            LockMode::Exclusive,
            !options.no_wait,
        )?;
        if !options.dry_run {
            session::reclaim_stale(&self.layout().tmp_dir())?;
        }

        let dead_leases = self.dead_lease_ids()?;
        let blob_files = self.blob_files_on_disk()?;
        let layer_dirs = self.layer_dirs_on_disk()?;
        let plan = self.db().transaction("prune", !options.dry_run, |tx| {
            for id in &dead_leases {
                tx.execute("DELETE FROM leases WHERE id = ?1", params![id])?;
            }
            let mut cache_records = 0;
            if let Some(unused_for) = options.cache_unused_for {
                let cutoff = unix_now_ns()
                    .saturating_sub(i64::try_from(unused_for.as_nanos()).unwrap_or(i64::MAX));
                cache_records = tx.execute(
                    "DELETE FROM cache_records WHERE last_used_ns <= ?1",
                    params![cutoff],
                )?;
            }
            // Edges of roots that no longer exist protect nothing.
            tx.execute_batch(
                "DELETE FROM refs WHERE
                    (substr(owner, 1, 6) = 'image:' AND substr(owner, 7) NOT IN (SELECT name FROM images))
                 OR (substr(owner, 1, 6) = 'cache:' AND substr(owner, 7) NOT IN (SELECT key FROM cache_records))
                 OR (substr(owner, 1, 6) = 'lease:' AND substr(owner, 7) NOT IN (SELECT CAST(id AS TEXT) FROM leases));
                 DROP TABLE IF EXISTS temp.reachable;
                 CREATE TEMP TABLE reachable (node TEXT PRIMARY KEY) WITHOUT ROWID;
                 INSERT INTO temp.reachable (node)
                 WITH RECURSIVE reach(node) AS (
                     SELECT target FROM refs WHERE substr(owner, 1, 6) IN ('image:', 'cache:', 'lease:')
                     UNION
                     SELECT refs.target FROM refs JOIN reach ON refs.owner = reach.node
                 )
                 SELECT node FROM reach;",
            )?;
            let reachable = reachable_nodes(tx)?;

            let doomed_blobs: Vec<Digest> = blob_files
                .iter()
                .filter(|d| !reachable.contains(&format!("blob:{d}")))
                .cloned()
                .collect();
            let mut doomed_layers = Vec::new();
            {
                let mut statement = tx.prepare("SELECT id, chain_id FROM layers ORDER BY id")?;
                let rows = statement
                    .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))?;
                for row in rows {
                    let (id, chain) = row?;
                    if !reachable.contains(&format!("layer:{chain}")) {
                        doomed_layers.push((id, parse_digest(&chain)?));
                    }
                }
            }
            for (id, _) in &doomed_layers {
                tx.execute("DELETE FROM layers WHERE id = ?1", params![id])?;
            }
            // Rows about blobs and layers that are gone or going.
            tx.execute_batch(
                "DELETE FROM blobs WHERE 'blob:' || digest NOT IN (SELECT node FROM temp.reachable);
                 DELETE FROM layer_blobs WHERE 'blob:' || blob_digest NOT IN (SELECT node FROM temp.reachable);
                 DELETE FROM manifest_layers WHERE 'blob:' || manifest_digest NOT IN (SELECT node FROM temp.reachable);
                 DELETE FROM manifests WHERE 'blob:' || digest NOT IN (SELECT node FROM temp.reachable);
                 DELETE FROM refs WHERE substr(owner, 1, 6) NOT IN ('image:', 'cache:', 'lease:')
                     AND owner NOT IN (SELECT node FROM temp.reachable);
                 DROP TABLE temp.reachable;",
            )?;
            let kept_ids: HashSet<String> = {
                let mut statement = tx.prepare("SELECT id FROM layers")?;
                let rows = statement.query_map([], |row| row.get::<_, i64>(0))?;
                rows.map(|id| id.map(|id| id.to_string()))
                    .collect::<rusqlite::Result<_>>()?
            };
            let doomed_ids: HashSet<String> =
                doomed_layers.iter().map(|(id, _)| id.to_string()).collect();
            let orphan_layer_dirs = layer_dirs
                .iter()
                .filter(|name| !kept_ids.contains(*name) && !doomed_ids.contains(*name))
                .cloned()
                .collect();
            Ok(Plan {
                blob_files: doomed_blobs,
                layer_rows: doomed_layers,
                orphan_layer_dirs,
                cache_records,
                stale_leases: dead_leases.len(),
            })
        })?;

        self.apply(plan, options)
    }

    /// Removes (or, for a dry run, measures) what the plan condemned.
    fn apply(&self, plan: Plan, options: &PruneOptions) -> Result<PruneReport> {
        let mut report = PruneReport {
            removed_cache_records: plan.cache_records,
            removed_stale_leases: plan.stale_leases,
            removed_orphan_layer_dirs: plan.orphan_layer_dirs.len(),
            ..PruneReport::default()
        };
        for digest in plan.blob_files {
            let path = self.blob_path(&digest);
            report.bytes_freed += apparent_size(&path)?;
            if !options.dry_run {
                remove_any(&path)?;
            }
            report.removed_blobs.push(digest);
        }
        let layers_dir = self.layout().layers_dir();
        let layer_dirs = plan
            .layer_rows
            .iter()
            .map(|(id, _)| id.to_string())
            .chain(plan.orphan_layer_dirs);
        for name in layer_dirs {
            let path = layers_dir.join(name);
            report.bytes_freed += apparent_size(&path)?;
            if !options.dry_run {
                remove_any(&path)?;
            }
        }
        report.removed_layers = plan
            .layer_rows
            .into_iter()
            .map(|(_, chain)| chain)
            .collect();
        if options.cache_mounts {
            let dir = self.layout().cache_mounts_dir();
            for entry in fs::read_dir(&dir).map_err(io_err("list cache mounts", &dir))? {
                let path = entry.map_err(io_err("list cache mounts", &dir))?.path();
                report.bytes_freed += apparent_size(&path)?;
                if !options.dry_run {
                    remove_any(&path)?;
                }
                report.removed_cache_mounts += 1;
            }
        }
        Ok(report)
    }

    fn dead_lease_ids(&self) -> Result<Vec<i64>> {
        let tmp = self.layout().tmp_dir();
        let mut dead = Vec::new();
        for lease in self.list_leases()? {
            if !session::session_is_live(&tmp, &lease.session)? {
                dead.push(lease.id);
            }
        }
        Ok(dead)
    }

    /// Every well-named file in `blobs/sha256/`. Other names are not blobs and are left alone.
    fn blob_files_on_disk(&self) -> Result<Vec<Digest>> {
        let dir = self.layout().blobs_dir();
        let mut digests = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list blobs", &dir))? {
            let entry = entry.map_err(io_err("list blobs", &dir))?;
            match entry.file_name().to_str().map(Digest::from_hex) {
                Some(Ok(digest)) => digests.push(digest),
                _ => {
                    tracing::warn!(path = %entry.path().display(), "ignoring a file in the blob directory that is not named by a digest")
                }
            }
        }
        digests.sort();
        Ok(digests)
    }

    fn layer_dirs_on_disk(&self) -> Result<Vec<String>> {
        let dir = self.layout().layers_dir();
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list layers", &dir))? {
            let entry = entry.map_err(io_err("list layers", &dir))?;
            match entry.file_name().into_string() {
                Ok(name) => names.push(name),
                Err(name) => {
                    tracing::warn!(name = ?name, "ignoring a non-UTF-8 entry in the layers directory")
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

fn reachable_nodes(conn: &rusqlite::Connection) -> Result<HashSet<String>, TxError> {
    let mut statement = conn.prepare("SELECT node FROM temp.reachable")?;
    let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The total apparent size of the regular files at or under `path` (0 if it is gone).
fn apparent_size(path: &Path) -> Result<u64> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::io("inspect", path, e)),
    };
    if !meta.is_dir() {
        return Ok(if meta.is_file() { meta.len() } else { 0 });
    }
    let mut total = 0;
    for entry in fs::read_dir(path).map_err(io_err("list", path))? {
        let entry = entry.map_err(io_err("list", path))?;
        total += apparent_size(&entry.path())?;
    }
    Ok(total)
}
