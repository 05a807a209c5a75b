//! Solving a definition: the ops the target needs, each once (ops are deduplicated by digest in the
//! definition), scheduled in parallel as soon as their inputs are ready ([`crate::schedule`]), each
//! through the content-addressed cache ([`crate::cache`]) before [`crate::ops::execute_op`].
//!
//! Per op: compute its cache key from its inputs' results and what it reads from local sources;
//! on a hit restore the recorded layer chain (`#N CACHED`); on a miss say why (`#N cache miss: …`),
//! run it, and record the result. Local sources are materialised (staged with `.dockerignore`) only
//! when an op that reads them actually runs, so a fully cached build never copies its context.
//! [`Solver::explain`] walks the same graph without running anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kiln_executor::{NativeSnapshotter, OverlaySnapshotter, Snapshotter};
use kiln_llb::{Definition, Op, OpDigest, OpKind, OpMetadata, OpRef, SourceOp};
use kiln_store::Store;

use crate::cache::StepPlan;
use crate::cache::explain::explain_miss_with_stored_lists;
use crate::cache::key::{InputComponent, InputKind, KeyComponents, chain_identity, compute_key};
use crate::cache::record::{CacheEntry, PreviousBuild, RecordError, StoreStatCache, position_keys};
use crate::cache::transfer::CacheImport;
use crate::error::{OpError, SolveError};
use crate::image::{ImagePuller, find_image};
use crate::layers::LayerOptions;
use crate::ops::{OpContext, execute_op};
use crate::progress::{Phase, Progress, ProgressEvent, StepId, emit, time_phase};
use crate::result::{Layer, OpOutput};
use crate::schedule::{Semaphore, exec_parallelism, pool_width, run_dag};
use crate::scratch::ScratchDir;

pub use crate::ops::LocalSource;

/// Which snapshotter RUN and file ops use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotterKind {
    /// overlayfs when it can be mounted here, else the copying snapshotter.
    #[default]
    Auto,
    Overlay,
    Native,
}

/// What a solve needs besides the definition.
#[derive(Debug, Clone, Default)]
pub struct SolveOptions {
    pub snapshotter: SnapshotterKind,
    pub layers: LayerOptions,
    /// Local sources by name.
    pub locals: BTreeMap<String, LocalSource>,
    /// Build secrets by id (`--secret`); never part of a cache key.
    pub secrets: crate::ops::Secrets,
}

/// Executes definitions against a store.
pub struct Solver<'a> {
    store: Store,
    options: SolveOptions,
    progress: &'a dyn Progress,
    puller: Option<&'a dyn ImagePuller>,
    snapshotter: Box<dyn Snapshotter>,
    /// See [`Solver::results_created`].
    results_created: Mutex<Option<SystemTime>>,
    /// Records of `--cache-from` caches, consulted when the store misses.
    cache_import: Option<&'a dyn CacheImport>,
    /// See [`Solver::cache_keys`].
    cache_keys: Mutex<Vec<String>>,
    /// See [`Solver::with_limits`].
    limits: kiln_executor::ResourceLimits,
    /// See [`Solver::with_extra_hosts`].
    extra_hosts: Vec<(String, String)>,
    /// See [`Solver::with_ssh_agents`].
    ssh_agents: crate::ops::SshAgents,
    /// See [`Solver::with_step_numbers`].
    step_numbers: Arc<AtomicUsize>,
}

impl<'a> Solver<'a> {
    /// A solver over `store`; picks the snapshotter now (probing overlayfs for
    /// [`SnapshotterKind::Auto`], unless an earlier probe on this host found it usable).
    pub fn new(
        store: Store,
        options: SolveOptions,
        progress: &'a dyn Progress,
        puller: Option<&'a dyn ImagePuller>,
    ) -> Solver<'a> {
        let snapshotter: Box<dyn Snapshotter> = match options.snapshotter {
            SnapshotterKind::Overlay => Box::new(OverlaySnapshotter),
            SnapshotterKind::Native => Box::new(NativeSnapshotter),
            SnapshotterKind::Auto => {
                // The trial mount is a good share of a cached build's CPU: its answer is kept in
                // the store (per kernel, filesystem and privileges) after the first success.
                let usable =
                    kiln_executor::snapshot::overlay_supported_cached(store.root(), || {
                        ScratchDir::new(&store, "probe")
                            .map(|dir| crate::mount::overlay_usable(dir.path()))
                            .unwrap_or(false)
                    });
                if usable {
                    Box::new(OverlaySnapshotter)
                } else {
                    tracing::info!("overlayfs is not usable here; using the copying snapshotter");
                    Box::new(NativeSnapshotter)
                }
            }
        };
        Solver {
            store,
            options,
            progress,
            puller,
            snapshotter,
            results_created: Mutex::new(None),
            cache_import: None,
            cache_keys: Mutex::new(Vec::new()),
            limits: kiln_executor::ResourceLimits::default(),
            extra_hosts: Vec::new(),
            ssh_agents: crate::ops::SshAgents::new(),
            step_numbers: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Numbers this solver's steps on from `counter` (the last number used) and advances it, so
    /// that several solves of one build (a remote context fetched first, then the build) show one
    /// sequence `#1 #2 …` instead of starting again at `#1`. Each solver counts from 0 otherwise.
    pub fn with_step_numbers(mut self, counter: Arc<AtomicUsize>) -> Solver<'a> {
        self.step_numbers = counter;
        self
    }

    /// Runs every RUN step under `limits` (`docker build --memory`). Like Docker, the limits are
    /// not part of any cache key: a step cached without them is reused with them and vice versa.
    pub fn with_limits(mut self, limits: kiln_executor::ResourceLimits) -> Solver<'a> {
        self.limits = limits;
        self
    }

    /// Adds `hosts` as (name, address) lines to every RUN step's `/etc/hosts` (`docker build
    /// --add-host`). As in BuildKit, where they are part of the exec op's definition, they are part
    /// of every RUN step's cache key; they never reach a layer (the file is the sandbox's own).
    pub fn with_extra_hosts(mut self, hosts: Vec<(String, String)>) -> Solver<'a> {
        self.extra_hosts = hosts;
        self
    }

    /// Forwards `agents` (id → agent socket, `docker build --ssh`) to RUN steps'
    /// `--mount=type=ssh`. Like secrets, they are never part of a cache key: another agent or key
    /// reuses the cached step.
    pub fn with_ssh_agents(mut self, agents: crate::ops::SshAgents) -> Solver<'a> {
        self.ssh_agents = agents;
        self
    }

    /// The key components of `op` with [`Solver::with_extra_hosts`] mixed into an exec op's
    /// digest (unchanged without extra hosts, so existing keys stay valid).
    fn with_extra_hosts_in_key(&self, op: &Op, mut components: KeyComponents) -> KeyComponents {
        if matches!(op.kind, OpKind::Exec(_)) && !self.extra_hosts.is_empty() {
            let hosts: Vec<String> = self
                .extra_hosts
                .iter()
                .map(|(name, address)| format!("{name}={address}"))
                .collect();
            components.op_digest =
                format!("{}+extra-hosts:{}", components.op_digest, hosts.join(","));
        }
        components
    }

    /// Also looks up keys the store misses in `import` (`--cache-from`).
    pub fn with_cache_import(mut self, import: &'a dyn CacheImport) -> Solver<'a> {
        self.cache_import = Some(import);
        self
    }

    /// After a [`Solver::solve`]: the cache keys of its steps that hit or were recorded, in the
    /// order they finished (what `--cache-to` exports).
    pub fn cache_keys(&self) -> Vec<String> {
        self.cache_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a successful [`Solver::solve`]: when the newest of the cache records behind its
    /// steps was first written, if every step that ran was recorded (and there was at least one
    /// step). Using it as the image's creation time (without `SOURCE_DATE_EPOCH`) makes a rebuild
    /// that ran nothing — or re-ran steps into identical results — write the same image id, as
    /// BuildKit does with the times of its cache records.
    pub fn results_created(&self) -> Option<SystemTime> {
        *self
            .results_created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The snapshotter in use (`overlay` or `native`).
    pub fn snapshotter_name(&self) -> &'static str {
        self.snapshotter.name()
    }

    /// Computes `target` of `definition`: independent ops run in parallel, cached ops are restored
    /// from the store, and every op that runs is recorded in the cache.
    ///
    /// # Errors
    /// [`SolveError`] for the first op that fails, naming its description and location; ops not
    /// started by then are not started.
    pub fn solve(&self, definition: &Definition, target: &OpRef) -> Result<OpOutput, SolveError> {
        // Keeps a concurrent prune from deleting what this solve writes before it is recorded.
        let _lock = self.store.lock_shared().map_err(|error| SolveError {
            description: "locking the store".to_string(),
            location: None,
            kind: Box::new(OpError::Store(error)),
        })?;
        let run = Run::new(self, definition, target, Mode::Solve)?;
        let mut results = run.execute()?;
        *self.cache_keys.lock().unwrap_or_else(|e| e.into_inner()) =
            std::mem::take(&mut *run.used_keys.lock().unwrap_or_else(|e| e.into_inner()));
        let output = match run.index.get(&target.digest).copied() {
            Some(node) => match results[node].take() {
                Some(result) => run.materialize(node, result)?,
                None => None,
            },
            None => None,
        };
        let newest = run.newest_record_ns.load(Ordering::SeqCst);
        let created = (newest > 0 && !run.unrecorded_ran.load(Ordering::SeqCst))
            .then(|| UNIX_EPOCH + Duration::from_nanos(newest.unsigned_abs()));
        *self
            .results_created
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = created;
        output.ok_or_else(|| SolveError {
            description: format!("target {}", target.digest.short()),
            location: None,
            kind: Box::new(OpError::MissingInput(target.digest.to_string())),
        })
    }

    /// What a solve of `target` would do, without running anything: per step, whether the cache
    /// has its result and, if not, why it would run. A step after one that would run cannot be
    /// looked up (its key depends on that step's result) and is reported as such.
    ///
    /// # Errors
    /// [`SolveError`] when the store cannot be read.
    pub fn explain(
        &self,
        definition: &Definition,
        target: &OpRef,
    ) -> Result<Vec<StepPlan>, SolveError> {
        let run = Run::new(self, definition, target, Mode::Explain)?;
        run.execute()?;
        let mut plans = run.plans.into_inner().unwrap_or_else(|e| e.into_inner());
        plans.sort_by_key(|(node, _)| *node);
        Ok(plans.into_iter().map(|(_, plan)| plan).collect())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Solve,
    Explain,
}

/// What one op produced, as later ops see it.
#[derive(Debug, Clone)]
struct NodeResult {
    /// `None` for a local source not materialised yet, and in explain mode.
    output: Option<OpOutput>,
    /// How the result enters later keys; `None` when unknown (explain mode, after a miss).
    identity: Option<String>,
    key: Option<String>,
    kind: InputKind,
    /// For a local source: its `.dockerignore` patterns and own excludes.
    local_excludes: Vec<String>,
    /// A hit in a `--cache-from` cache, fetched only when a step needs its content.
    imported: Option<Arc<ImportedHit>>,
}

/// A step whose result is an imported cache record not fetched yet.
#[derive(Debug)]
struct ImportedHit {
    key: String,
    /// The result's identity, which later steps' keys were computed from.
    identity: String,
    /// The step's inputs, to run it after all if the record cannot be fetched.
    inputs: Vec<(usize, NodeResult)>,
}

impl NodeResult {
    fn of_chain(chain: Vec<Layer>, kind: InputKind, key: Option<String>) -> NodeResult {
        NodeResult {
            identity: Some(chain_identity(chain.last().map(|layer| &layer.chain_id))),
            output: Some(OpOutput::Chain(chain)),
            key,
            kind,
            local_excludes: Vec::new(),
            imported: None,
        }
    }
}

/// One solve or explain in progress.
struct Run<'s, 'd> {
    solver: &'s Solver<'s>,
    mode: Mode,
    nodes: Vec<(OpDigest, &'d Op, Option<&'d OpMetadata>)>,
    index: HashMap<OpDigest, usize>,
    deps: Vec<Vec<usize>>,
    /// Set by the scheduler once a step failed: steps waiting to run do not start.
    cancelled: AtomicBool,
    /// The newest creation time of the cache records behind this solve's steps (ns).
    newest_record_ns: AtomicI64,
    /// Whether a step ran that could not be recorded (no key).
    unrecorded_ran: AtomicBool,
    /// Keys of the steps that hit or were recorded (for [`Solver::cache_keys`]).
    used_keys: Mutex<Vec<String>>,
    execs: Semaphore,
    stat_cache: StoreStatCache<'s>,
    /// The layer options as they enter keys.
    layer_settings: String,
    /// The build's local directories, for position keys.
    local_dirs: Vec<String>,
    /// Local sources staged on first use.
    staged: Vec<Mutex<Option<OpOutput>>>,
    plans: Mutex<Vec<(usize, StepPlan)>>,
}

/// The previous build of a step at its position records, for explaining a miss.
#[derive(Default)]
struct PreviousStep {
    build: Option<PreviousBuild>,
    /// Its entry lists' JSON when read ahead (`Some(None)`: there are none to read).
    entry_lists: Option<Option<Vec<u8>>>,
}

impl PreviousStep {
    /// The previous build at `positions`, with its entry lists' JSON if `with_entry_lists`. A
    /// store failure only costs the explanation its detail.
    fn load(store: &Store, positions: &[String], with_entry_lists: bool) -> PreviousStep {
        let build =
            CacheEntry::load_previous_at_positions(store, positions).unwrap_or_else(|error| {
                tracing::debug!(%error, "reading the previous build of the step");
                None
            });
        let entry_lists = with_entry_lists.then(|| {
            build
                .as_ref()
                .and_then(|build| build.entry_lists_json(store))
        });
        PreviousStep { build, entry_lists }
    }
}

impl<'s, 'd> Run<'s, 'd> {
    fn new(
        solver: &'s Solver<'s>,
        definition: &'d Definition,
        target: &OpRef,
        mode: Mode,
    ) -> Result<Run<'s, 'd>, SolveError> {
        // Only what the target needs: an unused stage never runs.
        let needed = definition.restricted_to(std::slice::from_ref(target));
        let mut nodes = Vec::new();
        let mut index = HashMap::new();
        for (digest, _, _) in needed.iter() {
            let Some(op) = definition.get(digest) else {
                continue;
            };
            index.insert(digest.clone(), nodes.len());
            nodes.push((digest.clone(), op, definition.metadata(digest)));
        }
        let mut deps = Vec::with_capacity(nodes.len());
        for (digest, op, metadata) in &nodes {
            let mut needs = Vec::new();
            for input in &op.inputs {
                let fail = |kind: OpError| step_error(digest, op, *metadata, kind);
                if input.output != 0 {
                    return Err(fail(OpError::Unsupported(format!(
                        "reading output {} of an op",
                        input.output
                    ))));
                }
                let &dep = index
                    .get(&input.digest)
                    .ok_or_else(|| fail(OpError::MissingInput(input.digest.to_string())))?;
                if !needs.contains(&dep) {
                    needs.push(dep);
                }
            }
            deps.push(needs);
        }
        let local_dirs = solver
            .options
            .locals
            .iter()
            .map(|(name, local)| format!("{name}={}", local.dir.display()))
            .collect();
        Ok(Run {
            solver,
            mode,
            staged: (0..nodes.len()).map(|_| Mutex::new(None)).collect(),
            nodes,
            index,
            deps,
            cancelled: AtomicBool::new(false),
            newest_record_ns: AtomicI64::new(0),
            unrecorded_ran: AtomicBool::new(false),
            used_keys: Mutex::new(Vec::new()),
            execs: Semaphore::new(exec_parallelism()),
            stat_cache: StoreStatCache::new(&solver.store),
            local_dirs,
            layer_settings: format!(
                "compression={:?} source_date_epoch={:?}",
                solver.options.layers.compression, solver.options.layers.source_date_epoch
            ),
            plans: Mutex::new(Vec::new()),
        })
    }

    fn execute(&self) -> Result<Vec<Option<NodeResult>>, SolveError> {
        let outcome = run_dag(
            &self.deps,
            pool_width(),
            &self.cancelled,
            |node, results| self.process(node, results),
        );
        self.stat_cache.flush();
        outcome
    }

    fn progress(&self) -> &dyn Progress {
        self.solver.progress
    }

    fn fail(&self, node: usize, kind: OpError) -> SolveError {
        let (digest, op, metadata) = &self.nodes[node];
        step_error(digest, op, *metadata, kind)
    }

    /// Runs `work` as phase `name` of the op described `description` (before its step starts);
    /// an explain only looks, so it reports nothing.
    fn phase<T>(&self, name: Phase, description: Option<&str>, work: impl FnOnce() -> T) -> T {
        match self.mode {
            Mode::Solve => time_phase(self.progress(), name, None, description, work),
            Mode::Explain => work(),
        }
    }

    fn start_step(&self, description: &str) -> StepId {
        let id = self.solver.step_numbers.fetch_add(1, Ordering::SeqCst) + 1;
        emit(
            self.progress(),
            ProgressEvent::Started {
                id,
                description: description.to_string(),
            },
        );
        id
    }

    fn plan(&self, node: usize, cached: bool, reason: Option<String>) {
        if let Some(description) = self.nodes[node].2.and_then(|m| m.description.clone()) {
            let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
            plans.push((
                node,
                StepPlan {
                    description,
                    cached,
                    reason,
                },
            ));
        }
    }

    fn process(
        &self,
        node: usize,
        results: &[OnceLock<NodeResult>],
    ) -> Result<NodeResult, SolveError> {
        let (_, op, _) = &self.nodes[node];
        let inputs: Vec<(usize, NodeResult)> = op
            .inputs
            .iter()
            .map(|input| {
                let dep = self.index[&input.digest];
                results[dep]
                    .get()
                    .cloned()
                    .map(|result| (dep, result))
                    .ok_or_else(|| self.fail(node, OpError::MissingInput(input.digest.to_string())))
            })
            .collect::<Result<_, _>>()?;
        // A source pinned by content (a download with a checksum, a checkout of a full commit
        // id) is identified before it runs: it is fetched only when a step reading it runs
        // ([`Run::materialize`]), so a cache hit makes no request.
        if let OpKind::Source(source) = &op.kind
            && let Some(identity) = crate::ops::pinned_source_identity(source)
        {
            return Ok(NodeResult {
                identity: Some(identity),
                ..unknown(InputKind::Step)
            });
        }
        match &op.kind {
            OpKind::Source(SourceOp::Local {
                name,
                exclude_patterns,
                ..
            }) => {
                let mut local_excludes = self
                    .solver
                    .options
                    .locals
                    .get(name)
                    .map(|local| local.excludes.clone())
                    .unwrap_or_default();
                local_excludes.extend(exclude_patterns.iter().cloned());
                Ok(NodeResult {
                    output: None,
                    identity: Some(format!("local:{name}")),
                    key: None,
                    kind: InputKind::Local,
                    local_excludes,
                    imported: None,
                })
            }
            OpKind::Source(SourceOp::Image { reference, .. }) => self.image_source(node, reference),
            OpKind::Source(SourceOp::Scratch) => {
                Ok(NodeResult::of_chain(Vec::new(), InputKind::Scratch, None))
            }
            OpKind::Source(_) | OpKind::Merge(_) => {
                if self.mode == Mode::Explain {
                    self.plan(node, false, Some("not cached by kiln".to_string()));
                    return Ok(unknown(InputKind::Step));
                }
                let output = self.run_op(node, &inputs, None)?;
                Ok(match output {
                    OpOutput::Chain(chain) => NodeResult::of_chain(chain, InputKind::Step, None),
                    OpOutput::Local(local) => NodeResult {
                        // A download or checkout the op identified by content is keyed like a
                        // step's result; anything else leaves the ops reading it uncached.
                        identity: local.content_identity.clone(),
                        kind: if local.content_identity.is_some() {
                            InputKind::Step
                        } else {
                            InputKind::Local
                        },
                        output: Some(OpOutput::Local(local)),
                        key: None,
                        local_excludes: Vec::new(),
                        imported: None,
                    },
                })
            }
            OpKind::File(_) | OpKind::Exec(_) => self.cacheable(node, &inputs),
        }
    }

    /// An image source: resolved (pulled when missing) and extracted. Shown as CACHED when it was
    /// already complete in the store.
    fn image_source(&self, node: usize, reference: &str) -> Result<NodeResult, SolveError> {
        let (_, op, metadata) = &self.nodes[node];
        let manifest = find_image(&self.solver.store, reference).ok().flatten();
        let extracted = manifest.as_ref().is_some_and(|manifest| {
            let mut parent = None;
            manifest.layers.iter().all(|layer| {
                let id = kiln_store::chain_id(parent.as_ref(), &layer.diff_id);
                let found = matches!(self.solver.store.layer_path(&id), Ok(Some(_)));
                parent = Some(id);
                found
            })
        });
        if self.mode == Mode::Explain {
            return Ok(match manifest {
                Some(manifest) => {
                    self.plan(node, true, None);
                    let mut parent = None;
                    for layer in &manifest.layers {
                        parent = Some(kiln_store::chain_id(parent.as_ref(), &layer.diff_id));
                    }
                    NodeResult {
                        output: None,
                        identity: Some(chain_identity(parent.as_ref())),
                        key: None,
                        kind: InputKind::Image,
                        local_excludes: Vec::new(),
                        imported: None,
                    }
                }
                None => {
                    self.plan(
                        node,
                        false,
                        Some("the image is not in the store".to_string()),
                    );
                    unknown(InputKind::Image)
                }
            });
        }
        let description = metadata.and_then(|m| m.description.clone());
        let step = description.as_deref().map(|text| self.start_step(text));
        let started = Instant::now();
        let output = self.execute_with_step(node, op, &[], step, started)?;
        if let Some(id) = step {
            let event = if extracted {
                ProgressEvent::Cached { id }
            } else {
                ProgressEvent::Done {
                    id,
                    elapsed: started.elapsed(),
                }
            };
            emit(self.progress(), event);
        }
        match output {
            OpOutput::Chain(chain) => Ok(NodeResult::of_chain(chain, InputKind::Image, None)),
            OpOutput::Local(_) => Err(self.fail(
                node,
                OpError::BadInput {
                    index: 0,
                    found: "a local directory",
                    expected: "a root filesystem",
                },
            )),
        }
    }

    /// A file or exec op: through the cache.
    fn cacheable(
        &self,
        node: usize,
        inputs: &[(usize, NodeResult)],
    ) -> Result<NodeResult, SolveError> {
        let metadata = self.nodes[node].2;
        let ignore_cache = metadata.is_some_and(|m| m.ignore_cache);
        let file = metadata
            .and_then(|m| m.location.as_ref())
            .map(|location| location.file.as_str())
            .unwrap_or_default();
        let positions = metadata
            .and_then(|m| m.description.as_deref())
            .map(|text| position_keys(text, file, &self.local_dirs))
            .unwrap_or_default();
        // A step reading the context: its previous build (with the entry lists that explain a
        // changed file) is read while the context is checksummed; on a hit it goes unused.
        let prefetch = !ignore_cache
            && !positions.is_empty()
            && inputs
                .iter()
                .any(|(_, input)| input.kind == InputKind::Local);
        std::thread::scope(|scope| {
            let previous = prefetch
                .then(|| scope.spawn(|| PreviousStep::load(&self.solver.store, &positions, true)));
            self.cacheable_with(node, inputs, &positions, previous)
        })
    }

    /// [`Run::cacheable`] with its position records and, for a step reading the context, the
    /// thread reading its previous build.
    fn cacheable_with(
        &self,
        node: usize,
        inputs: &[(usize, NodeResult)],
        positions: &[String],
        prefetched: Option<std::thread::ScopedJoinHandle<'_, PreviousStep>>,
    ) -> Result<NodeResult, SolveError> {
        let (_, op, metadata) = &self.nodes[node];
        let description = metadata.and_then(|m| m.description.clone());
        let ignore_cache = metadata.is_some_and(|m| m.ignore_cache);

        // In explain mode: an input would run, so its result (and this key) is unknown. When
        // solving, only an input without a content identity (not a chain) does that.
        let unknown_input = inputs.iter().any(|(_, input)| input.identity.is_none());
        if unknown_input && self.mode == Mode::Explain {
            self.plan(node, false, Some("an earlier step re-runs".to_string()));
            return Ok(unknown(InputKind::Step));
        }
        let components: Vec<InputComponent> = inputs
            .iter()
            .map(|(dep, input)| InputComponent {
                kind: input.kind,
                identity: input.identity.clone().unwrap_or_default(),
                key: input.key.clone(),
                description: self.nodes[*dep].2.and_then(|m| m.description.clone()),
                local_excludes: input.local_excludes.clone(),
            })
            .collect();
        let computed = if unknown_input {
            tracing::debug!("an input has no content identity; running the step uncached");
            None
        } else {
            Some(self.phase(Phase::CacheKey, description.as_deref(), || {
                compute_key(
                    op,
                    &self.layer_settings,
                    components,
                    &self.solver.options.locals,
                    &self.stat_cache,
                )
                .map(|components| self.solver.with_extra_hosts_in_key(op, components))
            }))
        };
        let components = match computed {
            Some(Ok(components)) => Some(components),
            Some(Err(error)) => {
                // The op's own run reports the problem (e.g. a missing COPY source).
                tracing::debug!(%error, "no cache key; running the step uncached");
                None
            }
            None => None,
        };
        let key = components.as_ref().map(KeyComponents::key);
        let mut reason = None;
        if let (Some(components), Some(key)) = (&components, &key) {
            if !ignore_cache {
                let found = self.phase(Phase::CacheLookup, description.as_deref(), || {
                    self.lookup(node, key)
                })?;
                if let Some(chain) = found {
                    self.used_keys
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(key.clone());
                    if self.mode == Mode::Explain {
                        self.plan(node, true, None);
                    } else if let Some(text) = &description {
                        let id = self.start_step(text);
                        emit(self.progress(), ProgressEvent::Cached { id });
                    }
                    return Ok(NodeResult::of_chain(
                        chain,
                        InputKind::Step,
                        Some(key.clone()),
                    ));
                }
                if let Some(hit) = self.imported_hit(node, key, inputs) {
                    if self.mode == Mode::Solve
                        && let Some(text) = &description
                    {
                        let id = self.start_step(text);
                        emit(self.progress(), ProgressEvent::Cached { id });
                    }
                    return Ok(hit);
                }
            }
            let store = &self.solver.store;
            // Without a prefetch, the per-path entry lists are read only if a read changed.
            let previous = match prefetched {
                Some(thread) => thread.join().unwrap_or_default(),
                None => PreviousStep::load(store, positions, false),
            };
            let PreviousStep { build, entry_lists } = previous;
            reason = Some(explain_miss_with_stored_lists(
                build.as_ref().map(|previous| &previous.entry.components),
                components,
                ignore_cache,
                || entry_lists.unwrap_or_else(|| build.as_ref()?.entry_lists_json(store)),
            ));
        }
        if self.mode == Mode::Explain {
            let reason = reason.unwrap_or_else(|| "its inputs cannot be checksummed".to_string());
            self.plan(node, false, Some(reason));
            return Ok(unknown(InputKind::Step));
        }

        // The per-path entry lists (megabytes for a large context) are written while the step
        // runs: they depend on the key components only.
        let (output, entry_lists) = std::thread::scope(|scope| {
            let entry_lists = components
                .as_ref()
                .filter(|components| {
                    (components.contents.iter()).any(|read| !read.checksum.entries.is_empty())
                })
                .map(|components| {
                    scope.spawn(|| CacheEntry::save_entry_lists(&self.solver.store, components))
                });
            let output = self.run_op(node, inputs, reason);
            let entry_lists = entry_lists.map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(RecordError::Compress {
                        key: "entry lists".to_string(),
                        source: std::io::Error::other("the writing thread panicked"),
                    })
                })
            });
            (output, entry_lists)
        });
        let output = output?;
        let OpOutput::Chain(chain) = output else {
            return Err(self.fail(
                node,
                OpError::Unsupported("a step whose result is a local directory".into()),
            ));
        };
        let mut recorded = false;
        if let (Some(components), Some(key)) = (components, &key) {
            let store = &self.solver.store;
            let entry = CacheEntry::new(description, components, &chain);
            let saved = match entry_lists {
                Some(Ok(entry_lists)) => {
                    entry.save_with_entry_lists(store, key, positions, entry_lists.as_ref())
                }
                // Written again, reporting its own error if it fails again.
                Some(Err(_)) | None => entry.save(store, key, positions),
            };
            match saved {
                // The record's creation time (an existing record keeps its own).
                Ok(created_ns) => {
                    self.newest_record_ns
                        .fetch_max(created_ns, Ordering::SeqCst);
                    recorded = true;
                    self.used_keys
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(key.clone());
                }
                // The build itself succeeded; only the next one loses this record.
                Err(error) => tracing::warn!(%error, "could not record the step in the cache"),
            }
        }
        if !recorded {
            self.unrecorded_ran.store(true, Ordering::SeqCst);
        }
        Ok(NodeResult::of_chain(chain, InputKind::Step, key))
    }

    /// The restored chain recorded under `key`, if complete in the store.
    fn lookup(&self, node: usize, key: &str) -> Result<Option<Vec<Layer>>, SolveError> {
        let store = &self.solver.store;
        // The small part of the record only: the per-path entry lists explain misses.
        let restored = match CacheEntry::load_result(store, key) {
            Ok(Some(entry)) => {
                let restored = entry.restore(store);
                if matches!(restored, Ok(Some(_))) {
                    self.newest_record_ns
                        .fetch_max(entry.created_ns, Ordering::SeqCst);
                }
                restored
            }
            Ok(None) => Ok(None),
            Err(error) => Err(error),
        };
        restored.map_err(|error| {
            let kind = match error {
                RecordError::Store { source, .. } => OpError::Store(*source),
                other => OpError::Io {
                    action: "read the build cache in",
                    path: store.root().to_path_buf(),
                    source: std::io::Error::other(other),
                },
            };
            self.fail(node, kind)
        })
    }

    /// A hit in a `--cache-from` cache: the record's result identity, its content left where it
    /// is until a step needs it ([`Run::materialize`]). An explain reports it as cached, naming
    /// the cache, and never fetches it.
    fn imported_hit(
        &self,
        node: usize,
        key: &str,
        inputs: &[(usize, NodeResult)],
    ) -> Option<NodeResult> {
        let import = self.solver.cache_import?;
        let entry = import.find(&self.solver.store, key)?;
        if self.mode == Mode::Explain {
            let origin = import
                .origin(key)
                .unwrap_or_else(|| "--cache-from".to_string());
            self.plan(node, true, Some(format!("imported from {origin}")));
            return Some(NodeResult {
                identity: Some(chain_identity(entry.layers.last().map(|l| &l.chain_id))),
                key: Some(key.to_string()),
                ..unknown(InputKind::Step)
            });
        }
        self.newest_record_ns
            .fetch_max(entry.created_ns, Ordering::SeqCst);
        self.used_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(key.to_string());
        let identity = chain_identity(entry.layers.last().map(|layer| &layer.chain_id));
        Some(NodeResult {
            output: None,
            identity: Some(identity.clone()),
            key: Some(key.to_string()),
            kind: InputKind::Step,
            local_excludes: Vec::new(),
            imported: Some(Arc::new(ImportedHit {
                key: key.to_string(),
                identity,
                inputs: inputs.to_vec(),
            })),
        })
    }

    /// The result of an imported hit, fetched into the store once. If the cache fails now, the
    /// step runs instead (a warning, not a failed build); it must then give the result later
    /// steps were keyed on.
    fn materialize_imported(&self, node: usize, hit: &ImportedHit) -> Result<OpOutput, SolveError> {
        let mut staged = self.staged[node].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(output) = staged.as_ref() {
            return Ok(output.clone());
        }
        let store = &self.solver.store;
        let fetched = match self
            .solver
            .cache_import
            .map(|import| import.import(store, &hit.key))
        {
            Some(Ok(Some(entry))) => entry.restore(store).unwrap_or_else(|error| {
                tracing::warn!(%error, "could not restore an imported cache record");
                None
            }),
            Some(Err(error)) => {
                tracing::warn!(%error, "could not fetch an imported cache record; running the step");
                None
            }
            Some(Ok(None)) | None => None,
        };
        let chain = match fetched {
            Some(chain) => chain,
            None => {
                let reason = "the imported cache record could not be fetched".to_string();
                let output = self.run_op(node, &hit.inputs, Some(reason))?;
                self.unrecorded_ran.store(true, Ordering::SeqCst);
                let chain = output.chain().map(<[Layer]>::to_vec).ok_or_else(|| {
                    self.fail(
                        node,
                        OpError::Unsupported("a step whose result is a local directory".into()),
                    )
                })?;
                let identity = chain_identity(chain.last().map(|layer| &layer.chain_id));
                if identity != hit.identity {
                    return Err(self.fail(
                        node,
                        OpError::Unsupported(format!(
                            "re-running a step whose imported cache record could not be fetched gave another result ({identity}, the cache had {}); build again without --cache-from",
                            hit.identity
                        )),
                    ));
                }
                chain
            }
        };
        let output = OpOutput::Chain(chain);
        *staged = Some(output.clone());
        Ok(output)
    }

    /// Runs the op (materialising local inputs first), with its progress step.
    fn run_op(
        &self,
        node: usize,
        inputs: &[(usize, NodeResult)],
        miss_reason: Option<String>,
    ) -> Result<OpOutput, SolveError> {
        let (_, op, metadata) = &self.nodes[node];
        let mut outputs = Vec::with_capacity(inputs.len());
        for (dep, input) in inputs {
            let output = self.materialize(*dep, input.clone())?.ok_or_else(|| {
                self.fail(node, OpError::MissingInput(self.nodes[*dep].0.to_string()))
            })?;
            outputs.push(output);
        }
        // Sandboxed processes are bounded by the cores; file ops are not.
        let _permit = matches!(op.kind, OpKind::Exec(_)).then(|| self.execs.acquire());
        if self.cancelled.load(Ordering::SeqCst) {
            // Another step failed while this one waited; that error is the one reported.
            return Err(self.fail(
                node,
                OpError::Io {
                    action: "start the step",
                    path: self.solver.store.root().to_path_buf(),
                    source: std::io::Error::other("cancelled after an earlier failure"),
                },
            ));
        }
        let description = metadata.and_then(|m| m.description.clone());
        let step = description.as_deref().map(|text| self.start_step(text));
        if let (Some(id), Some(reason)) = (step, miss_reason) {
            emit(self.progress(), ProgressEvent::CacheMiss { id, reason });
        }
        let started = Instant::now();
        let output = self.execute_with_step(node, op, &outputs, step, started)?;
        if let Some(id) = step {
            emit(
                self.progress(),
                ProgressEvent::Done {
                    id,
                    elapsed: started.elapsed(),
                },
            );
        }
        Ok(output)
    }

    fn execute_with_step(
        &self,
        node: usize,
        op: &Op,
        inputs: &[OpOutput],
        step: Option<StepId>,
        started: Instant,
    ) -> Result<OpOutput, SolveError> {
        let cx = OpContext {
            store: &self.solver.store,
            snapshotter: self.solver.snapshotter.as_ref(),
            layer_options: self.solver.options.layers,
            locals: &self.solver.options.locals,
            secrets: &self.solver.options.secrets,
            ssh_agents: &self.solver.ssh_agents,
            puller: self.solver.puller,
            progress: self.solver.progress,
            step,
            limits: self.solver.limits,
            extra_hosts: &self.solver.extra_hosts,
        };
        let phase = match op.kind {
            OpKind::Source(_) => Phase::Source,
            OpKind::Exec(_) => Phase::Exec,
            OpKind::File(_) => Phase::File,
            OpKind::Merge(_) => Phase::Merge,
        };
        let description = self.nodes[node].2.and_then(|m| m.description.as_deref());
        time_phase(self.progress(), phase, step, description, || {
            execute_op(&cx, op, inputs)
        })
        .map_err(|kind| {
            if let Some(id) = step {
                emit(
                    self.progress(),
                    ProgressEvent::Failed {
                        id,
                        elapsed: started.elapsed(),
                        error: kind.to_string(),
                    },
                );
            }
            self.fail(node, kind)
        })
    }

    /// The output of `node` as an input: local sources and pinned remote sources are staged on
    /// first use (once, however many ops read them).
    fn materialize(&self, node: usize, result: NodeResult) -> Result<Option<OpOutput>, SolveError> {
        if let Some(output) = result.output {
            return Ok(Some(output));
        }
        if let Some(hit) = &result.imported {
            return self.materialize_imported(node, hit).map(Some);
        }
        let deferred = matches!(&self.nodes[node].1.kind,
            OpKind::Source(source) if crate::ops::pinned_source_identity(source).is_some());
        if (result.kind != InputKind::Local && !deferred) || self.mode == Mode::Explain {
            return Ok(None);
        }
        let mut staged = self.staged[node].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(output) = staged.as_ref() {
            return Ok(Some(output.clone()));
        }
        let (_, op, metadata) = &self.nodes[node];
        let step = metadata
            .and_then(|m| m.description.as_deref())
            .map(|text| self.start_step(text));
        let started = Instant::now();
        let output = self.execute_with_step(node, op, &[], step, started)?;
        if let Some(id) = step {
            emit(
                self.progress(),
                ProgressEvent::Done {
                    id,
                    elapsed: started.elapsed(),
                },
            );
        }
        *staged = Some(output.clone());
        Ok(Some(output))
    }
}

fn unknown(kind: InputKind) -> NodeResult {
    NodeResult {
        output: None,
        identity: None,
        key: None,
        kind,
        local_excludes: Vec::new(),
        imported: None,
    }
}

fn step_error(
    digest: &OpDigest,
    op: &Op,
    metadata: Option<&OpMetadata>,
    kind: OpError,
) -> SolveError {
    SolveError {
        description: metadata
            .and_then(|m| m.description.clone())
            .unwrap_or_else(|| format!("{} op {}", op.kind_name(), digest.short())),
        location: metadata.and_then(|m| m.location.clone()),
        kind: Box::new(kind),
    }
}
