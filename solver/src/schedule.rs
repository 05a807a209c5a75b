//! The parallel scheduler: runs the nodes of a DAG on a pool of scoped std threads, each node once,
//! as soon as all of its dependencies have finished. The first failure stops the pool from
//! starting anything new; nodes already running finish, and that first error is returned.
//!
//! The pool is wide (file and source work is mostly I/O); sandboxed processes are bounded
//! separately with a [`Semaphore`] the node work takes around an exec, so a build never runs more
//! RUN steps at once than the machine has cores.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

/// Runs `work(node, results)` for nodes `0..deps.len()`, where `deps[n]` are the nodes `n` needs.
/// `results[d]` is set for every dependency `d` when `work` is called for `n`. Returns every
/// node's result, or the first error. `cancelled` is set once a node failed (after that error is
/// recorded), so running work can stop before its expensive part; whatever error it returns then
/// is dropped.
///
/// `deps` must be acyclic and refer only to existing nodes (a definition's topological order
/// guarantees it); a node whose dependencies never finish is never run.
pub(crate) fn run_dag<R, E, F>(
    deps: &[Vec<usize>],
    width: usize,
    cancelled: &AtomicBool,
    work: F,
) -> Result<Vec<Option<R>>, E>
where
    R: Send + Sync,
    E: Send,
    F: Fn(usize, &[OnceLock<R>]) -> Result<R, E> + Sync,
{
    let count = deps.len();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); count];
    let mut waiting: Vec<usize> = vec![0; count];
    for (node, needs) in deps.iter().enumerate() {
        for &dep in needs {
            dependents[dep].push(node);
            waiting[node] += 1;
        }
    }
    let ready: VecDeque<usize> = (0..count).filter(|&n| waiting[n] == 0).collect();
    let results: Vec<OnceLock<R>> = (0..count).map(|_| OnceLock::new()).collect();
    let state = Mutex::new(PoolState {
        ready,
        waiting,
        running: 0,
        failed: None,
    });
    let wake = Condvar::new();

    std::thread::scope(|scope| {
        for _ in 0..width.clamp(1, count.max(1)) {
            scope.spawn(|| {
                loop {
                    let node = {
                        let mut guard = lock(&state);
                        loop {
                            if guard.failed.is_some() {
                                break None;
                            }
                            if let Some(node) = guard.ready.pop_front() {
                                guard.running += 1;
                                break Some(node);
                            }
                            if guard.running == 0 {
                                break None;
                            }
                            guard = wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    let Some(node) = node else {
                        wake.notify_all();
                        return;
                    };
                    let outcome = work(node, &results);
                    let mut guard = lock(&state);
                    guard.running -= 1;
                    match outcome {
                        Ok(result) => {
                            // Each node runs once, so the cell is empty.
                            let _ = results[node].set(result);
                            for &next in &dependents[node] {
                                guard.waiting[next] -= 1;
                                if guard.waiting[next] == 0 {
                                    guard.ready.push_back(next);
                                }
                            }
                        }
                        Err(error) => {
                            if guard.failed.is_none() {
                                guard.failed = Some(error);
                            }
                            cancelled.store(true, Ordering::SeqCst);
                        }
                    }
                    drop(guard);
                    wake.notify_all();
                }
            });
        }
    });

    let state = state.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(error) = state.failed {
        return Err(error);
    }
    Ok(results.into_iter().map(OnceLock::into_inner).collect())
}

struct PoolState<E> {
    ready: VecDeque<usize>,
    waiting: Vec<usize>,
    running: usize,
    failed: Option<E>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking node propagates through the scope; the state itself stays consistent.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A counting semaphore (std has none).
pub(crate) struct Semaphore {
    available: Mutex<usize>,
    released: Condvar,
}

/// A held permit; released on drop.
pub(crate) struct Permit<'a> {
    semaphore: &'a Semaphore,
}

impl Semaphore {
    pub(crate) fn new(permits: usize) -> Semaphore {
        Semaphore {
            available: Mutex::new(permits.max(1)),
            released: Condvar::new(),
        }
    }

    /// Waits for a permit.
    pub(crate) fn acquire(&self) -> Permit<'_> {
        let mut available = lock(&self.available);
        while *available == 0 {
            available = self
                .released
                .wait(available)
                .unwrap_or_else(|e| e.into_inner());
        }
        *available -= 1;
        Permit { semaphore: self }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *lock(&self.semaphore.available) += 1;
        self.semaphore.released.notify_one();
    }
}

/// How many RUN steps may run at once: the machine's cores.
pub(crate) fn exec_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The pool width for everything else.
pub(crate) fn pool_width() -> usize {
    (exec_parallelism() * 2).max(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    #[test]
    fn each_node_runs_once_after_its_dependencies() {
        // 0 → {1, 2} → 3
        let deps = vec![vec![], vec![0], vec![0], vec![1, 2]];
        let runs = AtomicUsize::new(0);
        let results =
            run_dag::<usize, (), _>(&deps, 4, &AtomicBool::new(false), |node, results| {
                runs.fetch_add(1, Ordering::SeqCst);
                for &dep in &deps[node] {
                    assert!(results[dep].get().is_some(), "{dep} before {node}");
                }
                Ok(node * 10)
            })
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        assert_eq!(results, vec![Some(0), Some(10), Some(20), Some(30)]);
    }

    #[test]
    fn independent_nodes_overlap() {
        let deps = vec![vec![], vec![]];
        let times = Mutex::new(Vec::new());
        run_dag::<(), (), _>(&deps, 2, &AtomicBool::new(false), |_, _| {
            let start = Instant::now();
            std::thread::sleep(Duration::from_millis(150));
            times.lock().unwrap().push((start, Instant::now()));
            Ok(())
        })
        .unwrap();
        let times = times.into_inner().unwrap();
        let (a, b) = (times[0], times[1]);
        assert!(a.0 < b.1 && b.0 < a.1, "the two nodes did not overlap");
    }

    #[test]
    fn the_first_failure_cancels_what_has_not_started() {
        // 0 fails; 1 depends on it; 2 is independent but the pool has one thread and 0 goes first.
        let deps = vec![vec![], vec![0], vec![]];
        let ran = Mutex::new(Vec::new());
        let cancelled = AtomicBool::new(false);
        let error = run_dag::<(), String, _>(&deps, 1, &cancelled, |node, _| {
            ran.lock().unwrap().push(node);
            if node == 0 {
                Err("boom".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(error, "boom");
        assert!(cancelled.load(Ordering::SeqCst));
        assert_eq!(ran.into_inner().unwrap(), vec![0]);
    }

    #[test]
    fn the_semaphore_bounds_concurrency() {
        let semaphore = Semaphore::new(1);
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    let _permit = semaphore.acquire();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                    inside.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }
}
