//! The solver: cache keys for ops, parallel DAG scheduling, cache lookup and record, progress events
//! and cache-miss explanations. It knows ops and keys, never Dockerfiles.
