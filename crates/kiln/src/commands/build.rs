//! `kiln build`: reads the Dockerfile and the context (a directory, or a tar on stdin), lowers the
//! Dockerfile to LLB with base images resolved from the store, solves the target with
//! `kiln-solver`, and exports the result: by default an image in kiln's store under every `-t` name
//! (Docker schema 2 media types, as `docker build` makes), or what `--output` asks for (an OCI or
//! docker archive, the root filesystem as a directory or a tar). The image id goes to stdout (and
//! `--iidfile`), unless an archive does (`dest=-`: then stdout carries nothing else, as with
//! buildx); progress goes to stderr. `--metadata-file` and `--annotation` follow buildx.
//!
//! Flags follow `docker build` so scripts move over unchanged. `SOURCE_DATE_EPOCH` makes builds
//! reproducible: it is the image's creation time and clamps file times in new layers.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use kiln_frontend::lower::{LowerOptions, lower};
use kiln_oci::export::{ArchiveFormat, ExportImage, export_archive};
use kiln_oci::manifest::MediaTypeSet;
use kiln_solver::cache::transfer::{
    CacheExport, CacheFrom, CacheTo, ExportMode, INLINE_CACHE_FIELD, ImportedCache, export_to_dir,
    export_to_registry, inline_cache_value, pack_cache_mounts, select_records,
};
use kiln_solver::image::{
    ImageOptions, RegistryTransport, export_rootfs, write_image_annotated, write_rootfs_tar,
};
use kiln_solver::layers::LayerOptions;
use kiln_solver::progress::{Phase, emit, time_phase};
use kiln_solver::{LocalSource, OpOutput, ScratchDir, SnapshotterKind, SolveOptions, Solver};
use kiln_store::Store;

use crate::cli::Global;
use crate::commands::debug::{parse_build_args, read_dockerfile};
use crate::commands::{host_platform, normalize_image_name, open_store};
use crate::metadata_file::{BuildMetadata, ImageMetadata};
use crate::output_spec::{Annotation, Compression, Destination, OutputKind, OutputSpec};
use crate::progress::ProgressMode;
use crate::resolver::{LazyPuller, StoreResolver};
use crate::store_blobs::StoreBlobs;

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` reads it from stdin).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Name the image `NAME[:TAG]` (repeatable).
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,
    /// A build argument, `KEY=VALUE` (or `KEY` to take it from the environment).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// The stage to build (default: the last).
    #[arg(long)]
    pub target: Option<String>,
    /// A label for the image, `KEY=VALUE` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Write the image id to this file.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Where the result goes: `type=oci|docker,dest=F.tar`, `type=local,dest=DIR`,
    /// `type=tar,dest=F.tar`, `type=image` (the default: kiln's store), or a bare path. `dest=-`
    /// writes the archive to stdout (not to a terminal), e.g. `-o type=docker,dest=- | docker load`.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub output: Option<String>,
    /// After a successful build, write what it made to FILE as JSON, with buildx's keys:
    /// `containerimage.config.digest` (the image id), `containerimage.digest` and
    /// `containerimage.descriptor` (the manifest stored, exported or pushed) and `image.name`
    /// (the names, comma-joined). Left out: `buildx.build.ref` (kiln has no builder instance) and
    /// `buildx.build.provenance` (kiln makes no attestations); `type=local` and `type=tar` outputs
    /// make no image, so the object is empty.
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// An annotation on the image manifest, `[TYPE[PLATFORM]:]KEY=VALUE` as buildx reads it
    /// (repeatable): no type or `manifest:` puts it in the manifest (`manifest[linux/amd64]:` only
    /// when building that platform). Such images use OCI media types. `index:` is refused: a
    /// single-platform build writes no image index (as in BuildKit); so are
    /// `manifest-descriptor:` and `index-descriptor:`.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Network for RUN steps: `default` (the host's, as Docker's builder), `host` or `none`.
    #[arg(long, value_name = "MODE", default_value = "default")]
    pub network: String,
    /// Run every step even if a cached result exists.
    #[arg(long)]
    pub no_cache: bool,
    /// Run every step of these stages even if cached (repeatable, or comma-separated).
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    pub no_cache_filter: Vec<String>,
    /// Print which steps are cached and why the others would run, without running anything.
    #[arg(long)]
    pub explain: bool,
    /// Resolve every base image from its registry, even when kiln's store has it (`docker build
    /// --pull`). Without it a local image wins and only missing ones are pulled.
    #[arg(long)]
    pub pull: bool,
    /// Push the image to its registry under every `-t` name after building (same as
    /// `--output type=image,push=true`).
    #[arg(long)]
    pub push: bool,
    /// How to show progress: `auto` (tty on a terminal, else plain), `plain` (BuildKit's text),
    /// `tty`, `quiet`, or `json` (one JSON object per line on stderr with timestamps, step
    /// events, phase durations and the image id; see docs/progress-json.md).
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Print only the image id (same as `--progress=quiet`).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// How RUN and COPY get a writable root: `overlay`, `native` (copying, for hosts without
    /// overlayfs), or `auto`.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "auto",
        env = "KILN_SNAPSHOTTER"
    )]
    pub snapshotter: String,
    /// A secret for `RUN --mount=type=secret`: `id=ID,src=FILE` or `id=ID,env=VAR` (as Docker).
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR")]
    pub secrets: Vec<String>,
    /// An SSH agent for `RUN --mount=type=ssh` (as Docker): `default` or `ID` alone (the agent of
    /// `$SSH_AUTH_SOCK`), `ID=/path/to/agent.sock`, or `ID=/path/to/key[,KEY…]` (private keys,
    /// served by an `ssh-agent` kiln starts for the build) (repeatable).
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET|KEY[,KEY]]")]
    pub ssh: Vec<String>,
    /// Export the build cache: `type=local,dest=DIR` or `type=registry,ref=NAME:TAG`, with
    /// `mode=min` (the image's steps, default) or `mode=max` (every step), or `type=inline` (in
    /// the image's config) (repeatable).
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,
    /// Use an exported build cache: `type=local,src=DIR`, `type=registry,ref=NAME:TAG`, or an
    /// image pushed with an inline cache (repeatable). A cache that cannot be read is a
    /// warning, not an error.
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,
    /// Memory limit for every RUN step, as Docker writes it: a number with an optional unit b,
    /// k, m or g (64m); at least 6m, 0 for none. Not part of the cache key (as with Docker).
    #[arg(short = 'm', long, value_name = "BYTES", value_parser = super::run::parse_memory_flag)]
    pub memory: Option<u64>,
    /// Add a line to every RUN step's /etc/hosts: NAME:IP or NAME=IP (repeatable; host-gateway
    /// is 127.0.0.1, RUN steps use the host network). Part of RUN steps' cache keys, as in
    /// BuildKit; never part of a layer.
    #[arg(long = "add-host", value_name = "NAME:IP", value_parser = parse_add_host_flag)]
    pub add_host: Vec<(String, String)>,
    /// An extra build context, `NAME=VALUE` (repeatable): a directory, `docker-image://REF`,
    /// `oci-layout://PATH[:TAG|@DIGEST]`, a Git URL or an HTTP(S) URL. It stands in for
    /// `FROM NAME` (and a stage named NAME) and is read by `COPY --from=NAME` and
    /// `RUN --mount=from=NAME`.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,
    /// The platform to build for, `os/arch[/variant]` (default: this machine's). It is the
    /// default for FROM, sets the TARGET* build args and is written into the image.
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// Grants an entitlement, as BuildKit does (repeatable): `security.insecure` lets
    /// `RUN --security=insecure` run privileged; `network.host` is accepted (RUN uses the host
    /// network by default, as Docker's builder does).
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
    /// The build context: a directory, `-` for a tar (or a Dockerfile) on stdin, a Git URL
    /// (`URL#ref:subdir`), or an HTTP(S) URL of a tarball or a Dockerfile.
    pub context: String,
}

pub fn run(args: BuildArgs, global: &Global) -> anyhow::Result<ExitCode> {
    // Cheap checks first, so bad flags fail before any work.
    let output = args.output.as_deref().map(OutputSpec::parse).transpose()?;
    let archive_on_stdout = output.as_ref().is_some_and(writes_to_stdout);
    if archive_on_stdout && io::stdout().is_terminal() {
        bail!(
            "refusing to write the archive of --output {:?} to a terminal: redirect stdout to a \
             file or a pipe (e.g. `| docker load`), or give dest=FILE",
            args.output.as_deref().unwrap_or_default()
        );
    }
    let annotations = args
        .annotations
        .iter()
        .map(|value| Annotation::parse(value))
        .collect::<Result<Vec<_>, _>>()?;
    let network = match args.network.as_str() {
        "default" | "sandbox" => kiln_llb::NetworkMode::Sandbox,
        "host" => kiln_llb::NetworkMode::Host,
        "none" => kiln_llb::NetworkMode::None,
        other => bail!("invalid --network {other:?} (expected default, host or none)"),
    };
    let snapshotter = match args.snapshotter.as_str() {
        "auto" => SnapshotterKind::Auto,
        "overlay" | "overlayfs" => SnapshotterKind::Overlay,
        "native" => SnapshotterKind::Native,
        other => bail!("invalid --snapshotter {other:?} (expected auto, overlay or native)"),
    };
    let names = args
        .tags
        .iter()
        .map(|tag| normalize_image_name(tag))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.push {
        match output.as_ref().map(|spec| &spec.kind) {
            None if names.is_empty() => bail!("--push needs a name: give -t NAME"),
            None | Some(OutputKind::Image { .. }) => {}
            Some(_) => {
                bail!("--push needs the image output; it cannot be combined with this --output")
            }
        }
    }
    let labels = parse_labels(&args.labels)?;
    let secrets = parse_secrets(&args.secrets)?;
    // Lives until the build ends: agents kiln started for key files stop when it is dropped.
    let ssh = crate::ssh_agent::SshForwards::start(&args.ssh, std::env::var_os("SSH_AUTH_SOCK"))?;
    let cache_to = args
        .cache_to
        .iter()
        .map(|spec| CacheTo::parse(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let cache_from = args
        .cache_from
        .iter()
        .map(|spec| CacheFrom::parse(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let source_date_epoch = source_date_epoch()?;
    let target_platform = args
        .platform
        .as_deref()
        .map(parse_target_platform)
        .transpose()?;
    let manifest_annotations = manifest_annotations_for(
        &annotations,
        target_platform.as_ref().unwrap_or(&host_platform()),
    )?;
    if !manifest_annotations.is_empty()
        && output.as_ref().and_then(|spec| spec.oci_media_types) == Some(false)
    {
        bail!(
            "--annotation needs OCI media types (Docker's manifests have no annotations): \
             drop oci-mediatypes=false"
        );
    }

    let store = open_store(global)?;
    let _lock = store
        .lock_shared()
        .context("locking the store for the build")?;

    // Made before any work, so `--progress=json` times count from the start of the build.
    let progress = if args.quiet {
        ProgressMode::Quiet
    } else {
        args.progress
    }
    .display();
    // One numbering for every solve of this build: remote contexts are fetched by solves of their own.
    let step_numbers = Arc::new(AtomicUsize::new(0));
    let input = BuildInput::read(&args, &store, snapshotter, progress.as_ref(), &step_numbers)?;
    let named_contexts = crate::build_inputs::prepare_named_contexts(
        &args.build_contexts,
        &store,
        snapshotter,
        progress.as_ref(),
        &step_numbers,
        target_platform.as_ref().unwrap_or(&host_platform()),
    )?;
    let dockerfile = time_phase(progress.as_ref(), Phase::Parse, None, None, || {
        kiln_frontend::parser::parse_dockerfile(&input.dockerfile, &input.dockerfile_name)
    })?;
    let mut options = LowerOptions::new(host_platform());
    options.target = args.target.clone();
    options.build_args = parse_build_args(&args.build_args)?;
    options.dockerfile_name = input.dockerfile_name.clone();
    options.labels = labels;
    options.network = network;
    options.no_cache = args.no_cache;
    options.no_cache_filter = args.no_cache_filter.clone();
    options.target_platform = target_platform;
    options.named_contexts = named_contexts.lowering.clone();
    let lowered = time_phase(progress.as_ref(), Phase::Lower, None, None, || {
        lower(
            &dockerfile,
            &options,
            &StoreResolver::new(store.clone()).always_pull(args.pull),
        )
    })?;
    for warning in &lowered.warnings {
        let message = match &warning.location {
            Some(location) => format!(
                "{}:{}: {}",
                input.dockerfile_name, location.start_line, warning.message
            ),
            None => warning.message.clone(),
        };
        // Through the display, so `--progress=json` keeps every line JSON.
        emit(
            progress.as_ref(),
            kiln_solver::ProgressEvent::Warning { message },
        );
    }

    let compression = output
        .as_ref()
        .map_or(Compression::Gzip { level: None }, |spec| spec.compression);
    let solve_options = SolveOptions {
        snapshotter,
        layers: LayerOptions {
            compression: layer_compression(compression),
            source_date_epoch,
        },
        locals: named_contexts
            .locals
            .clone()
            .into_iter()
            .chain([(
                options.context_name.clone(),
                LocalSource {
                    dir: input.context_dir.clone(),
                    excludes: input.excludes.clone(),
                },
            )])
            .collect(),
        secrets,
    };
    let puller = LazyPuller::default();
    // An explain only looks: no cache mount is unpacked into the store (nor any blob fetched).
    let imported = import_caches(&store, &cache_from, &args.cache_from, !args.explain);
    let mut solver = Solver::new(
        store.clone(),
        solve_options,
        progress.as_ref(),
        Some(&puller),
    )
    .with_step_numbers(Arc::clone(&step_numbers));
    if !imported.is_empty() {
        solver = solver.with_cache_import(&imported);
    }
    if let Some(bytes) = args.memory.filter(|bytes| *bytes > 0) {
        solver = solver.with_limits(kiln_executor::ResourceLimits {
            memory_bytes: Some(bytes),
            pids_max: None,
        });
    }
    if !args.add_host.is_empty() {
        solver = solver.with_extra_hosts(args.add_host.clone());
    }
    if !ssh.agents().is_empty() {
        solver = solver.with_ssh_agents(ssh.agents().clone());
    }
    tracing::debug!(snapshotter = solver.snapshotter_name(), "solving");
    check_entitlements(&lowered.definition, &args.allow)?;
    if !args.explain {
        // A RUN for a platform this machine cannot execute fails now, naming the step, rather
        // than with the kernel's "exec format error" from inside the sandbox.
        let binfmt_dir = crate::run_platform::binfmt_misc_dir();
        crate::run_platform::ensure_runnable(&solver, &lowered, &host_platform(), &binfmt_dir)?;
    }
    if args.explain {
        let plan = solver.explain(&lowered.definition, &lowered.target.root)?;
        print!("{}", kiln_solver::cache::format_plan(&plan));
        return Ok(ExitCode::SUCCESS);
    }
    let result = solver.solve(&lowered.definition, &lowered.target.root)?;
    let OpOutput::Chain(chain) = result else {
        bail!(
            "the build's result is a local directory, not a root filesystem; kiln cannot export it yet"
        );
    };

    let created = match source_date_epoch {
        Some(seconds) => SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64),
        // The time of the cache records behind the result: an unchanged rebuild keeps its id.
        None => solver.results_created().unwrap_or_else(SystemTime::now),
    };
    let image_config = with_inline_cache(
        &store,
        &solver,
        &chain,
        &cache_to,
        &imported,
        lowered.target.config.clone(),
    )?;
    let image_with = |media_types: MediaTypeSet| {
        // Only OCI manifests carry annotations (BuildKit switches to OCI for them too).
        let media_types = if manifest_annotations.is_empty() {
            media_types
        } else {
            MediaTypeSet::Oci
        };
        write_image_annotated(
            &store,
            &chain,
            &image_config,
            lowered.target.base_history_len,
            &ImageOptions {
                media_types,
                created,
            },
            &manifest_annotations,
        )
        .context("writing the image")
    };
    let export_started = Instant::now();
    let kind = output.map(|spec| (spec.kind, spec.oci_media_types));
    // The image written (for the id and the metadata file) and the names it went out under.
    let built: Option<(kiln_solver::image::BuiltImage, Vec<String>)> = match kind {
        None => {
            let image = image_with(MediaTypeSet::Docker)?;
            store_image(&store, &image, &names)?;
            if args.push {
                push_image(&store, &image, &names)?;
            }
            Some((image, names.clone()))
        }
        Some((OutputKind::Image { names: more, push }, oci)) => {
            let mut all = names.clone();
            for name in &more {
                all.push(normalize_image_name(name)?);
            }
            let media_types = if oci == Some(true) {
                MediaTypeSet::Oci
            } else {
                MediaTypeSet::Docker
            };
            let image = image_with(media_types)?;
            store_image(&store, &image, &all)?;
            if push || args.push {
                push_image(&store, &image, &all)?;
            }
            Some((image, all))
        }
        Some((OutputKind::Oci { dest }, _)) => {
            let image = image_with(MediaTypeSet::Oci)?;
            write_archive(&store, &image, &names, ArchiveFormat::OciLayout, &dest)?;
            Some((image, names.clone()))
        }
        Some((OutputKind::Docker { dest }, oci)) => {
            let media_types = if oci == Some(true) {
                MediaTypeSet::Oci
            } else {
                MediaTypeSet::Docker
            };
            let image = image_with(media_types)?;
            write_archive(&store, &image, &names, ArchiveFormat::DockerArchive, &dest)?;
            Some((image, names.clone()))
        }
        Some((OutputKind::Local { dest }, _)) => {
            export_rootfs(&store, &chain, &dest)
                .with_context(|| format!("writing the root filesystem to {}", dest.display()))?;
            None
        }
        Some((OutputKind::Tar { dest }, _)) => {
            write_to(&dest, |out| {
                write_rootfs_tar(&store, &chain, source_date_epoch, out)
                    .map_err(anyhow::Error::from)
            })?;
            None
        }
    };

    export_caches(&store, &solver, &chain, &cache_to, &imported)?;
    emit(
        progress.as_ref(),
        kiln_solver::ProgressEvent::Phase {
            name: Phase::Export,
            step: None,
            description: None,
            elapsed: export_started.elapsed(),
        },
    );

    let image_id = built
        .as_ref()
        .map(|(image, _)| image.config_digest.to_string());
    if let Some(id) = &image_id {
        emit(
            progress.as_ref(),
            kiln_solver::ProgressEvent::Image { id: id.clone() },
        );
    }
    if let Some(path) = &args.metadata_file {
        let metadata = BuildMetadata {
            image: built.as_ref().map(|(image, names)| ImageMetadata {
                config_digest: image.config_digest.to_string(),
                manifest_digest: image.manifest_digest.to_string(),
                manifest_media_type: image.manifest_media_type.clone(),
                manifest_size: image.manifest_size,
                names: names.clone(),
            }),
        };
        metadata.write(path)?;
    }
    if let Some(id) = image_id {
        if let Some(path) = &args.iidfile {
            write_file_atomically(path, id.as_bytes())
                .with_context(|| format!("writing the image id to {}", path.display()))?;
        }
        // When stdout carries the archive (`dest=-`) nothing else may go there, as with buildx.
        if !archive_on_stdout {
            println!("{id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `spec` writes its archive to stdout (`dest=-`, or the bare `-`).
fn writes_to_stdout(spec: &OutputSpec) -> bool {
    matches!(
        &spec.kind,
        OutputKind::Oci {
            dest: Destination::Stdout
        } | OutputKind::Docker {
            dest: Destination::Stdout
        } | OutputKind::Tar {
            dest: Destination::Stdout
        }
    )
}

/// The manifest annotations of `--annotation` values for a build of `platform`; a value with
/// `[PLATFORM]` counts only when PLATFORM is the one built.
///
/// # Errors
/// A `[PLATFORM]` that does not parse, or an annotation type kiln cannot write.
fn manifest_annotations_for(
    annotations: &[Annotation],
    platform: &kiln_llb::Platform,
) -> anyhow::Result<BTreeMap<String, String>> {
    let host = host_platform();
    for annotation in annotations {
        if let Some(named) = &annotation.platform {
            kiln_frontend::lower::parse_platform(named, &host).map_err(|reason| {
                anyhow::anyhow!(
                    "invalid --annotation {:?}: platform {named:?}: {reason}",
                    annotation.text
                )
            })?;
        }
    }
    Ok(crate::output_spec::manifest_annotations(
        annotations,
        |named| kiln_frontend::lower::parse_platform(named, &host).is_ok_and(|p| p == *platform),
    )?)
}

/// The records of every `--cache-from` (and with `with_cache_mounts` their cache mounts,
/// unpacked into the store); one that cannot be read is a warning.
/// BuildKit's entitlements: a `RUN --security=insecure` step needs `--allow security.insecure`.
///
/// # Errors
/// An unknown entitlement, or an insecure step without the grant (naming its Dockerfile line).
fn check_entitlements(definition: &kiln_llb::Definition, allow: &[String]) -> anyhow::Result<()> {
    let mut insecure_allowed = false;
    for entitlement in allow {
        match entitlement.as_str() {
            "security.insecure" => insecure_allowed = true,
            "network.host" => {}
            other => {
                bail!("invalid --allow {other:?} (expected security.insecure or network.host)")
            }
        }
    }
    if insecure_allowed {
        return Ok(());
    }
    for (_, op, metadata) in definition.iter() {
        let kiln_llb::OpKind::Exec(exec) = &op.kind else {
            continue;
        };
        if exec.security != kiln_llb::SecurityMode::Insecure {
            continue;
        }
        let place = match metadata.and_then(|m| m.location.as_ref()) {
            Some(location) => format!("{}:{}: ", location.file, location.start_line),
            None => String::new(),
        };
        let step = metadata
            .and_then(|m| m.description.as_deref())
            .unwrap_or("RUN --security=insecure");
        bail!(
            "{place}{step}: RUN --security=insecure needs the security.insecure entitlement: \
             run `kiln build --allow security.insecure` to grant it"
        );
    }
    Ok(())
}

fn import_caches(
    store: &Store,
    specs: &[CacheFrom],
    given: &[String],
    with_cache_mounts: bool,
) -> ImportedCache {
    let mut imported = if with_cache_mounts {
        ImportedCache::for_store(store)
    } else {
        ImportedCache::new()
    };
    for (spec, text) in specs.iter().zip(given) {
        if let Err(error) = imported.add(spec) {
            eprintln!("warning: --cache-from {text}: {error}; building without it");
        }
    }
    imported
}

/// `config` with the records of the image's steps in it when `--cache-to type=inline` asks.
fn with_inline_cache(
    store: &Store,
    solver: &Solver<'_>,
    chain: &[kiln_solver::Layer],
    specs: &[CacheTo],
    imported: &ImportedCache,
    mut config: kiln_image::ImageConfig,
) -> anyhow::Result<kiln_image::ImageConfig> {
    if specs.contains(&CacheTo::Inline) {
        let keys = solver.cache_keys();
        let records = select_records(store, &keys, chain, ExportMode::Min, Some(imported))
            .context("reading the build cache to inline")?;
        config.extra.insert(
            INLINE_CACHE_FIELD.to_string(),
            inline_cache_value(&records)?,
        );
    }
    Ok(config)
}

/// Writes every `--cache-to` (but `type=inline`, which is in the image already).
fn export_caches(
    store: &Store,
    solver: &Solver<'_>,
    chain: &[kiln_solver::Layer],
    specs: &[CacheTo],
    imported: &ImportedCache,
) -> anyhow::Result<()> {
    let keys = solver.cache_keys();
    for spec in specs {
        let (mode, cache_mounts) = match spec {
            CacheTo::Local {
                mode, cache_mounts, ..
            }
            | CacheTo::Registry {
                mode, cache_mounts, ..
            } => (*mode, *cache_mounts),
            CacheTo::Inline => continue,
        };
        let export = CacheExport {
            records: select_records(store, &keys, chain, mode, Some(imported))
                .context("reading the build cache to export")?,
            cache_mounts: if cache_mounts {
                pack_cache_mounts(store).context("packing the cache mounts to export")?
            } else {
                Vec::new()
            },
        };
        match spec {
            CacheTo::Local {
                dest, old_blobs, ..
            } => {
                let summary = export_to_dir(store, &export, dest, Some(imported), *old_blobs)
                    .with_context(|| format!("exporting the build cache to {}", dest.display()))?;
                tracing::info!(?summary, dest = %dest.display(), "exported the build cache");
            }
            CacheTo::Registry { reference, .. } => {
                let summary = export_to_registry(store, &export, reference, Some(imported))
                    .with_context(|| format!("exporting the build cache to {reference}"))?;
                tracing::info!(?summary, reference, "exported the build cache");
            }
            CacheTo::Inline => {}
        }
    }
    Ok(())
}

/// The Dockerfile and the context directory of a build.
struct BuildInput {
    dockerfile: String,
    /// How errors name the Dockerfile (`Dockerfile`, or the `-f` path as given).
    dockerfile_name: String,
    context_dir: PathBuf,
    /// `.dockerignore` patterns.
    excludes: Vec<String>,
    /// Holds a context unpacked from stdin.
    _stdin_context: Option<ScratchDir>,
    /// Holds a context fetched from a URL.
    _remote_context: Option<crate::build_inputs::FetchedContext>,
}

impl BuildInput {
    fn read(
        args: &BuildArgs,
        store: &Store,
        snapshotter: SnapshotterKind,
        progress: &dyn kiln_solver::Progress,
        step_numbers: &Arc<AtomicUsize>,
    ) -> anyhow::Result<BuildInput> {
        let dockerfile_from_stdin = args.file.as_deref() == Some(Path::new("-"));
        let mut stdin_dockerfile = None;
        let mut stdin_context = None;
        let mut remote_context = None;
        let context_dir = if args.context == "-" {
            if dockerfile_from_stdin {
                bail!("the Dockerfile and the context cannot both come from stdin");
            }
            let scratch = ScratchDir::new(store, "stdin-context")
                .context("creating a directory for the stdin context")?;
            let dir = scratch.path().join("context");
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            match kiln_context::read_stdin_context(io::stdin().lock(), &dir)? {
                kiln_context::StdinContext::Dockerfile(bytes) => {
                    stdin_dockerfile = Some(
                        String::from_utf8(bytes).context("the Dockerfile on stdin is not UTF-8")?,
                    );
                }
                kiln_context::StdinContext::Archive { .. } => {}
            }
            stdin_context = Some(scratch);
            dir
        } else if let crate::build_inputs::ContextArg::Remote(remote) =
            crate::build_inputs::classify_context(&args.context)
        {
            let fetched = crate::build_inputs::fetch_remote(
                store,
                snapshotter,
                progress,
                step_numbers,
                &remote,
                true,
            )?;
            // A URL that is not an archive is the Dockerfile (of an empty context), as in Docker.
            if !dockerfile_from_stdin {
                stdin_dockerfile = fetched.dockerfile.clone();
            }
            let dir = fetched.dir.clone();
            remote_context = Some(fetched);
            dir
        } else {
            let dir = PathBuf::from(&args.context);
            match fs::metadata(&dir) {
                Ok(meta) if meta.is_dir() => dir,
                Ok(_) => bail!(
                    "unable to prepare context: path {:?} is not a directory",
                    args.context
                ),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    bail!(
                        "unable to prepare context: path {:?} not found",
                        args.context
                    )
                }
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("unable to prepare context {:?}", args.context));
                }
            }
        };

        let (dockerfile, dockerfile_name, dockerfile_path) = match (&stdin_dockerfile, &args.file) {
            (Some(text), _) => (text.clone(), "Dockerfile".to_string(), None),
            (None, Some(file)) if dockerfile_from_stdin => {
                (read_dockerfile(file)?, "Dockerfile".to_string(), None)
            }
            (None, Some(file)) => {
                // A relative -f is relative to the working directory, as in `docker build`, but a
                // context from stdin carries its own Dockerfile.
                let path = if (stdin_context.is_some() || remote_context.is_some())
                    && file.is_relative()
                {
                    context_dir.join(file)
                } else {
                    file.clone()
                };
                (
                    read_dockerfile(&path)?,
                    file.display().to_string(),
                    Some(path),
                )
            }
            (None, None) => {
                let path = context_dir.join("Dockerfile");
                (
                    read_dockerfile(&path)?,
                    "Dockerfile".to_string(),
                    Some(path),
                )
            }
        };

        let ignore = kiln_context::load_context_ignore(&context_dir, dockerfile_path.as_deref())?;
        let excludes = match &ignore.file {
            // BuildKit reads `.dockerignore` only for contexts sent by the client, never for a
            // Git or HTTP context.
            Some(_) if remote_context.is_some() => Vec::new(),
            Some(file) => {
                let text = fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                kiln_context::read_ignore_lines(&text)
            }
            None => Vec::new(),
        };
        Ok(BuildInput {
            dockerfile,
            dockerfile_name,
            context_dir,
            excludes,
            _stdin_context: stdin_context,
            _remote_context: remote_context,
        })
    }
}

/// Tags the image with every name.
fn store_image(
    store: &Store,
    image: &kiln_solver::image::BuiltImage,
    names: &[String],
) -> anyhow::Result<()> {
    for name in names {
        store
            .tag(name, &image.manifest_digest, &image.config_digest)
            .with_context(|| format!("tagging the image as {name}"))?;
    }
    Ok(())
}

/// Pushes the image to every name's registry.
fn push_image(
    store: &Store,
    image: &kiln_solver::image::BuiltImage,
    names: &[String],
) -> anyhow::Result<()> {
    if names.is_empty() {
        bail!("pushing needs a name: give -t NAME (or name= in --output)");
    }
    let transport = RegistryTransport::from_docker_config()?;
    for name in names {
        let digest = transport.push(store, &image.manifest_digest, name)?;
        eprintln!("pushed {name}@{digest}");
    }
    Ok(())
}

fn write_archive(
    store: &Store,
    image: &kiln_solver::image::BuiltImage,
    names: &[String],
    format: ArchiveFormat,
    dest: &Destination,
) -> anyhow::Result<()> {
    let images = [ExportImage {
        names: names.to_vec(),
        descriptor: image.descriptor()?,
    }];
    write_to(dest, |out| {
        export_archive(&StoreBlobs::new(store), &images, format, out).map_err(anyhow::Error::from)
    })
}

/// Writes through `write` to a file (atomically: a temp file beside it, fsynced, renamed) or stdout.
fn write_to<F>(dest: &Destination, write: F) -> anyhow::Result<()>
where
    F: FnOnce(Box<dyn Write>) -> anyhow::Result<Box<dyn Write>>,
{
    match dest {
        Destination::Stdout => {
            let mut out = write(Box::new(io::BufWriter::new(io::stdout().lock())))?;
            out.flush().context("writing to stdout")?;
        }
        Destination::File(path) => {
            let temp = temp_path(path);
            let file =
                fs::File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
            let result = write(Box::new(io::BufWriter::new(
                file.try_clone().context("duplicating a file handle")?,
            )))
            .and_then(|mut out| out.flush().context("writing the output"))
            .and_then(|()| file.sync_all().context("syncing the output"))
            .and_then(|()| {
                fs::rename(&temp, path)
                    .with_context(|| format!("renaming {} to {}", temp.display(), path.display()))
            });
            if result.is_err() {
                let _ = fs::remove_file(&temp);
            }
            result.with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Parses `--add-host` as `kiln run` does; RUN steps share the host's network, so
/// `host-gateway` is the host's loopback address. clap names the flag in the error.
fn parse_add_host_flag(value: &str) -> Result<(String, String), super::run::FlagError> {
    super::run::parse_add_host(value, super::run::HostGateway::Loopback)
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.kiln-tmp-{}", std::process::id()))
}

fn write_file_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_to(&Destination::File(path.to_path_buf()), |mut out| {
        out.write_all(bytes)?;
        Ok(out)
    })
}

/// `--label KEY=VALUE` values (a bare `KEY` is an empty label, as in Docker).
fn parse_labels(values: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for value in values {
        let (key, val) = value.split_once('=').unwrap_or((value.as_str(), ""));
        if key.is_empty() {
            bail!("invalid --label {value:?}: the name is empty");
        }
        labels.insert(key.to_string(), val.to_string());
    }
    Ok(labels)
}

/// `--secret` values, as Docker (buildx) reads them: `id=ID` with `src=FILE` (or `source=`),
/// `env=VAR`, or `type=file|env`; with neither, the environment variable named ID if set, else the
/// file ID. Env values are captured now; files are checked now and read when a step uses them.
fn parse_secrets(values: &[String]) -> anyhow::Result<kiln_solver::Secrets> {
    let mut secrets = kiln_solver::Secrets::new();
    for value in values {
        let (mut id, mut file, mut env, mut kind) = (None, None, None, None);
        for field in value.split(',') {
            let (key, val) = field.split_once('=').unwrap_or((field, ""));
            match key.trim().to_ascii_lowercase().as_str() {
                "id" => id = Some(val.to_string()),
                "src" | "source" => file = Some(val.to_string()),
                "env" => env = Some(val.to_string()),
                "type" if matches!(val, "file" | "env") => kind = Some(val.to_string()),
                _ => bail!(
                    "invalid --secret {value:?}: unexpected {field:?} (expected id=ID,src=FILE or id=ID,env=VAR)"
                ),
            }
        }
        let Some(id) = id.filter(|id| !id.is_empty()) else {
            bail!("invalid --secret {value:?}: id=ID is required");
        };
        if kind.as_deref() == Some("env") && env.is_none() {
            env = file.take().or_else(|| Some(id.clone()));
        }
        // Neither given: the variable named ID when it is set, else the file ID.
        if file.is_none() && env.is_none() && std::env::var_os(&id).is_none() {
            file = Some(id.clone());
        }
        let source = match file {
            Some(file) => {
                let path = PathBuf::from(file);
                fs::metadata(&path)
                    .with_context(|| format!("--secret id={id}: cannot read {}", path.display()))?;
                kiln_solver::SecretSource::File(path)
            }
            None => {
                let var = env.unwrap_or_else(|| id.clone());
                let Some(found) = std::env::var_os(&var) else {
                    bail!("--secret id={id}: the environment variable {var} is not set");
                };
                kiln_solver::SecretSource::Value(found.into_encoded_bytes())
            }
        };
        secrets.insert(id, source);
    }
    Ok(secrets)
}

/// `--platform`: one platform (Docker's multi-platform lists need an image index per platform,
/// which one build here does not make).
fn parse_target_platform(value: &str) -> anyhow::Result<kiln_llb::Platform> {
    if value.contains(',') {
        bail!("--platform {value:?}: kiln builds one platform at a time; give a single os/arch");
    }
    kiln_frontend::lower::parse_platform(value.trim(), &host_platform())
        .map_err(|reason| anyhow::anyhow!("invalid --platform {value:?}: {reason}"))
}

/// `SOURCE_DATE_EPOCH` as seconds, when set.
fn source_date_epoch() -> anyhow::Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => value
            .trim()
            .parse::<i64>()
            .map(Some)
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds")),
        Err(_) => Ok(None),
    }
}

/// The layer compression for an output's `compression=` (gzip level 1 by default: fast, and the
/// most compatible).
fn layer_compression(compression: Compression) -> kiln_oci::compress::Compression {
    match compression {
        Compression::Gzip { level } => kiln_oci::compress::Compression::Gzip {
            level: level.unwrap_or(1),
        },
        Compression::Zstd { level } => kiln_oci::compress::Compression::Zstd {
            level: level.unwrap_or(3),
        },
        Compression::Uncompressed => kiln_oci::compress::Compression::Uncompressed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_like_docker() {
        let labels = parse_labels(&["a=1".into(), "b".into(), "c=x=y".into()]).unwrap();
        assert_eq!(labels["a"], "1");
        assert_eq!(labels["b"], "");
        assert_eq!(labels["c"], "x=y");
        assert!(parse_labels(&["=v".into()]).is_err());
    }

    #[test]
    fn secrets_parse_like_docker() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        fs::write(&file, "v").unwrap();
        let secrets = parse_secrets(&[format!("id=a,src={}", file.display())]).unwrap();
        assert!(matches!(&secrets["a"], kiln_solver::SecretSource::File(path) if *path == file));
        // PATH is set in any test environment; the value is captured now.
        let secrets = parse_secrets(&["id=p,env=PATH".into(), "type=env,id=PATH".into()]).unwrap();
        assert!(matches!(&secrets["p"], kiln_solver::SecretSource::Value(v) if !v.is_empty()));
        assert!(matches!(
            &secrets["PATH"],
            kiln_solver::SecretSource::Value(_)
        ));
        assert!(parse_secrets(&["src=/x".into()]).is_err(), "no id");
        assert!(parse_secrets(&["id=a,bogus=1".into()]).is_err());
        let missing = parse_secrets(&["id=a,src=/nonexistent/kiln-secret".into()]).unwrap_err();
        assert!(format!("{missing:#}").contains("/nonexistent/kiln-secret"));
        let unset = parse_secrets(&["id=a,env=KILN_TEST_SURELY_UNSET_VAR".into()]).unwrap_err();
        assert!(unset.to_string().contains("KILN_TEST_SURELY_UNSET_VAR"));
    }

    #[test]
    fn temp_files_sit_beside_the_destination() {
        let temp = temp_path(Path::new("/out/image.tar"));
        assert_eq!(temp.parent(), Some(Path::new("/out")));
        assert!(
            temp.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".image.tar.kiln-tmp-")
        );
    }
}
