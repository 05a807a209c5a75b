//! The on-disk store: content-addressed blobs (verified on write and on read), extracted layers,
//! the metadata database (SQLite in WAL mode: multi-process safe and transactional), leases and GC.
