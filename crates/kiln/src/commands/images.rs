//! `kiln images`, `tag`, `rmi`, `inspect`, `history` and `prune`: the local image store as Docker's
//! image commands show it.
//!
//! The store keeps full normalised names (`docker.io/library/busybox:latest`); everything printed
//! uses Docker's familiar form (`busybox:latest`). An image id is the digest of the image's config,
//! shown as its first 12 hex digits, and any unambiguous prefix of at least 4 hex digits finds it,
//! as with `docker`. Tables follow Docker's layout (columns padded by 3, at least 10 wide), sizes
//! Docker's decimal units with 3 significant digits, times Docker's "2 minutes ago".
//!
//! The helpers every image command shares (finding an image by name or id, reading its config,
//! formatting) are here too; `archive` and `registry` use them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kiln_image::{Digest, ImageConfig, Reference};
use kiln_store::{ImageRecord, ManifestRecord, PruneOptions, Store};
use serde_json::{Map, Value, json};

use super::{normalize_image_name, open_store};
use crate::cli::Global;

/// Configs are small; refuse to read anything absurd into memory.
const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

#[derive(clap::Args, Debug)]
pub struct ImagesArgs {
    /// Only list images of this repository (and tag).
    #[arg(value_name = "REPOSITORY[:TAG]")]
    pub repository: Option<String>,
    /// Only print image ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Accepted for Docker compatibility: kiln keeps no intermediate images, so all are shown.
    #[arg(short, long)]
    pub all: bool,
    /// Show the manifest digests.
    #[arg(long)]
    pub digests: bool,
    /// Do not truncate image ids.
    #[arg(long)]
    pub no_trunc: bool,
    /// `json` for one JSON object per image, or a Go-style template such as
    /// `{{.Repository}}:{{.Tag}}`.
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct TagArgs {
    /// The image to name: a name or an image id (prefix).
    #[arg(value_name = "SOURCE_IMAGE[:TAG]")]
    pub source: String,
    /// The new name.
    #[arg(value_name = "TARGET_IMAGE[:TAG]")]
    pub target: String,
}

#[derive(clap::Args, Debug)]
pub struct RmiArgs {
    /// Remove every name of an image given by id, even across repositories.
    #[arg(short, long)]
    pub force: bool,
    /// Names or image ids.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A Go-style template applied to each image (`{{.Id}}`, `{{json .Config}}`), instead of JSON.
    #[arg(short, long)]
    pub format: Option<String>,
    /// Names or image ids.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    /// The image: a name or an image id (prefix).
    pub image: String,
    /// Do not truncate ids and commands.
    #[arg(long)]
    pub no_trunc: bool,
    /// Only print ids.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// Remove everything no image needs: also the build cache and the contents of cache mounts.
    #[arg(short, long)]
    pub all: bool,
    /// Also remove the build cache records (and what only they kept).
    #[arg(long)]
    pub cache: bool,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Accepted for Docker compatibility: kiln never asks for confirmation.
    #[arg(short, long)]
    pub force: bool,
}

/// An image found in the store, with what the commands show about it.
pub(crate) struct StoredImage {
    /// One record for the image (the one the user named, when named).
    pub record: ImageRecord,
    /// Whether the user named it by an exact name rather than by id.
    pub by_name: bool,
}

/// Finds `name` in the store: an exact (normalised) name first, then an image id or id prefix.
///
/// # Errors
/// When the store cannot be read. `Ok(None)` when nothing matches.
pub(crate) fn find_image(store: &Store, name: &str) -> anyhow::Result<Option<StoredImage>> {
    if let Ok(normalized) = normalize_image_name(name)
        && let Some(record) = store
            .resolve_image(&normalized)
            .with_context(|| format!("looking up {name}"))?
        && record.name == normalized
    {
        return Ok(Some(StoredImage {
            record,
            by_name: true,
        }));
    }
    let found = store
        .resolve_image(name)
        .with_context(|| format!("looking up {name}"))?;
    Ok(found.map(|record| StoredImage {
        by_name: record.name == name,
        record,
    }))
}

/// As [`find_image`], failing with Docker's "No such image" when nothing matches.
pub(crate) fn require_image(store: &Store, name: &str) -> anyhow::Result<StoredImage> {
    find_image(store, name)?.ok_or_else(|| anyhow::anyhow!("No such image: {name}"))
}

/// Docker's short form of a stored name (`busybox:latest`); the name itself if it does not parse.
pub(crate) fn familiar(name: &str) -> String {
    Reference::parse(name)
        .map(|r| r.familiar())
        .unwrap_or_else(|_| name.to_string())
}

/// The 12-hex short id of an image or layer digest.
pub(crate) fn short_id(digest: &Digest) -> &str {
    &digest.hex()[..12]
}

/// Reads and parses an image's config blob (verified by the store's reader).
pub(crate) fn read_config(store: &Store, digest: &Digest) -> anyhow::Result<ImageConfig> {
    let bytes = store
        .read_blob_to_vec(digest, MAX_CONFIG_BYTES)
        .with_context(|| format!("reading image config {digest}"))?;
    ImageConfig::from_json(&bytes).with_context(|| format!("parsing image config {digest}"))
}

/// The manifest record of an image.
pub(crate) fn read_manifest(store: &Store, record: &ImageRecord) -> anyhow::Result<ManifestRecord> {
    store
        .manifest(&record.manifest_digest)
        .with_context(|| format!("looking up the manifest of {}", familiar(&record.name)))?
        .with_context(|| {
            format!(
                "the store has no record of manifest {} of {}",
                record.manifest_digest,
                familiar(&record.name)
            )
        })
}

/// The size Docker shows: decimal units, 3 significant digits, no space (`4.26MB`, `512B`).
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    format!("{}{}", format_g3(size), UNITS[unit])
}

/// Go's `%.3g` for values below 1000: 3 significant digits, trailing zeros dropped.
fn format_g3(value: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let digits_before_point = value.abs().log10().floor() as i32 + 1;
    let decimals = (3 - digits_before_point).max(0) as usize;
    let text = format!("{value:.decimals$}");
    // Rounding can carry into a fourth digit (999.6 → "1000"); Go prints that as 1e+03.
    if text == "1000" {
        return "1e+03".to_string();
    }
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Docker's `HumanDuration` (go-units), used as "<duration> ago".
pub(crate) fn human_duration(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    if seconds < 1 {
        return "Less than a second".to_string();
    }
    if seconds == 1 {
        return "1 second".to_string();
    }
    if seconds < 60 {
        return format!("{seconds} seconds");
    }
    let minutes = seconds / 60;
    if minutes == 1 {
        return "About a minute".to_string();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    // Go rounds to the nearest hour here (half away from zero).
    let hours = (seconds + 1800) / 3600;
    if hours == 1 {
        return "About an hour".to_string();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", seconds / 3600 / 24 / 365)
}

/// Parses an RFC 3339 time as written in image configs.
fn parse_time(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// "2 minutes ago" for an RFC 3339 time; `N/A` when there is none or it does not parse.
pub(crate) fn created_since(created: Option<&str>) -> String {
    let Some(when) = created.and_then(parse_time) else {
        return "N/A".to_string();
    };
    let elapsed = time::OffsetDateTime::now_utc() - when;
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    format!("{} ago", human_duration(elapsed))
}

/// An RFC 3339 time with nanoseconds for a time in ns since the epoch.
fn format_ns(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Prints rows as Docker's tabwriter does: each column but the last padded to its widest cell
/// plus 3, and at least 10.
pub(crate) fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(columns) {
            if i + 1 == columns {
                line.push_str(cell);
            } else {
                let width = (widths[i] + 3).max(10);
                let _ = write!(line, "{cell:<width$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Renders a small subset of Go's text/template against `value`: literal text, `{{.Field.Sub}}`,
/// `{{.}}`, and `{{json .Field}}`. Values print as Go prints them (`[a b]` for lists,
/// `map[k:v]` for maps, `<no value>` for missing fields).
///
/// # Errors
/// An unclosed action or an action other than these.
pub(crate) fn render_template(template: &str, value: &Value) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            bail!("template {template:?}: unclosed action");
        };
        let action = after[..end].trim_matches(|c: char| c == '-' || c.is_whitespace());
        let (as_json, path) = match action.strip_prefix("json ") {
            Some(path) => (true, path.trim()),
            None => (false, action),
        };
        let selected = select_path(value, path)
            .with_context(|| format!("template {template:?}: unsupported action {action:?}"))?;
        if as_json {
            out.push_str(&serde_json::to_string(&selected.unwrap_or(&Value::Null))?);
        } else {
            match selected {
                Some(v) => out.push_str(&go_text(v)),
                None => out.push_str("<no value>"),
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Follows `.A.B` through `value`; `Some(None)` for a missing field, `None` for an invalid path.
fn select_path<'a>(value: &'a Value, path: &str) -> Option<Option<&'a Value>> {
    if path == "." {
        return Some(Some(value));
    }
    let fields = path.strip_prefix('.')?;
    let mut current = Some(value);
    for field in fields.split('.') {
        if field.is_empty() || !field.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        current = current.and_then(|v| v.get(field));
    }
    Some(current)
}

/// A JSON value the way Go's `fmt` prints the equivalent Go value.
fn go_text(value: &Value) -> String {
    match value {
        Value::Null => "<nil>".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(go_text).collect();
            format!("[{}]", inner.join(" "))
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{k}:{}", go_text(&map[k])))
                .collect();
            format!("map[{}]", inner.join(" "))
        }
    }
}

/// Prints a JSON document with Docker's 4-space indentation.
pub(crate) fn print_json_indented(value: &Value) -> anyhow::Result<()> {
    let mut buffer = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut buffer, formatter);
    serde::Serialize::serialize(value, &mut serializer)?;
    buffer.push(b'\n');
    std::io::Write::write_all(&mut std::io::stdout().lock(), &buffer)
        .context("writing to stdout")?;
    Ok(())
}

/// What the listing shows about one image (shared by all its names).
struct ImageSummary {
    created: Option<String>,
    size: u64,
}

fn summarize(store: &Store, record: &ImageRecord) -> ImageSummary {
    let created = match read_config(store, &record.config_digest) {
        Ok(config) => config.created,
        Err(error) => {
            tracing::warn!(image = %record.name, error = format!("{error:#}"), "cannot read the image config");
            None
        }
    };
    let size = match read_manifest(store, record) {
        Ok(manifest) => manifest.layers.iter().map(|l| l.size).sum(),
        Err(error) => {
            tracing::warn!(image = %record.name, error = format!("{error:#}"), "cannot read the image manifest");
            0
        }
    };
    ImageSummary { created, size }
}

/// Splits a stored name into Docker's REPOSITORY, TAG and DIGEST columns.
fn name_columns(name: &str) -> (String, String, Option<String>) {
    match Reference::parse(name) {
        Ok(reference) => (
            reference.familiar_name(),
            reference.tag().unwrap_or("<none>").to_string(),
            reference.digest().map(ToString::to_string),
        ),
        Err(_) => (name.to_string(), "<none>".to_string(), None),
    }
}

/// Whether `name` (stored) matches the `docker images REPOSITORY[:TAG]` filter.
fn matches_filter(name: &str, filter: &Reference, filter_has_tag: bool) -> bool {
    let Ok(reference) = Reference::parse(name) else {
        return false;
    };
    reference.name() == filter.name() && (!filter_has_tag || reference.tag() == filter.tag())
}

pub fn run_images(args: ImagesArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let filter = args
        .repository
        .as_deref()
        .map(|text| {
            Reference::parse(text)
                .map(|r| {
                    let has_tag = r.tag().is_some();
                    (r, has_tag)
                })
                .with_context(|| format!("invalid repository filter {text:?}"))
        })
        .transpose()?;
    let mut records = store.list_images().context("listing images")?;
    if let Some((filter, has_tag)) = &filter {
        records.retain(|r| matches_filter(&r.name, filter, *has_tag));
    }
    let mut summaries: BTreeMap<Digest, ImageSummary> = BTreeMap::new();
    for record in &records {
        if !summaries.contains_key(&record.config_digest) {
            summaries.insert(record.config_digest.clone(), summarize(&store, record));
        }
    }
    // Newest first, as Docker sorts; names in order within one image.
    let created_key = |record: &ImageRecord| {
        summaries
            .get(&record.config_digest)
            .and_then(|s| s.created.as_deref())
            .and_then(parse_time)
    };
    records.sort_by(|a, b| {
        created_key(b)
            .cmp(&created_key(a))
            .then_with(|| a.config_digest.cmp(&b.config_digest))
            .then_with(|| a.name.cmp(&b.name))
    });

    let id_of = |record: &ImageRecord| {
        if args.no_trunc {
            record.config_digest.to_string()
        } else {
            short_id(&record.config_digest).to_string()
        }
    };
    let mut out = String::new();
    if args.quiet {
        let mut seen = BTreeSet::new();
        for record in &records {
            // Docker prints each image once.
            if seen.insert(record.config_digest.clone()) {
                out.push_str(&id_of(record));
                out.push('\n');
            }
        }
    } else if let Some(format) = &args.format {
        for record in &records {
            let summary = &summaries[&record.config_digest];
            let (repository, tag, digest) = name_columns(&record.name);
            let size = human_size(summary.size);
            let row = json!({
                "Containers": "N/A",
                "CreatedAt": summary.created.clone().unwrap_or_default(),
                "CreatedSince": created_since(summary.created.as_deref()),
                "Digest": digest.unwrap_or_else(|| record.manifest_digest.to_string()),
                "ID": id_of(record),
                "Repository": repository,
                "SharedSize": "N/A",
                "Size": size,
                "Tag": tag,
                "UniqueSize": "N/A",
                "VirtualSize": size,
            });
            if format == "json" {
                out.push_str(&serde_json::to_string(&row)?);
            } else {
                out.push_str(&render_template(format, &row)?);
            }
            out.push('\n');
        }
    } else {
        let mut headers = vec!["REPOSITORY", "TAG"];
        if args.digests {
            headers.push("DIGEST");
        }
        headers.extend(["IMAGE ID", "CREATED", "SIZE"]);
        let rows: Vec<Vec<String>> = records
            .iter()
            .map(|record| {
                let summary = &summaries[&record.config_digest];
                let (repository, tag, _) = name_columns(&record.name);
                let mut row = vec![repository, tag];
                if args.digests {
                    row.push(record.manifest_digest.to_string());
                }
                row.push(id_of(record));
                row.push(created_since(summary.created.as_deref()));
                row.push(human_size(summary.size));
                row
            })
            .collect();
        out = render_table(&headers, &rows);
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

pub fn run_tag(args: TagArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let target = Reference::parse(&args.target)
        .with_context(|| format!("invalid target name {:?}", args.target))?;
    if target.digest().is_some() {
        bail!(
            "refusing to create a tag with a digest reference: {}",
            args.target
        );
    }
    let target = target.with_default_tag().to_string();
    let _lock = store.lock_shared().context("locking the store")?;
    let source = require_image(&store, &args.source)?;
    store
        .tag(
            &target,
            &source.record.manifest_digest,
            &source.record.config_digest,
        )
        .with_context(|| format!("tagging {} as {}", args.source, familiar(&target)))?;
    Ok(ExitCode::SUCCESS)
}

/// Whether all `names` are tags of one repository (Docker then lets an id remove them all).
fn single_repository(names: &[String]) -> bool {
    let repositories: BTreeSet<String> = names
        .iter()
        .map(|n| {
            Reference::parse(n)
                .map(|r| r.name())
                .unwrap_or_else(|_| n.clone())
        })
        .collect();
    repositories.len() <= 1
}

/// Every stored name of the image with `config_digest`.
fn names_of(store: &Store, config_digest: &Digest) -> anyhow::Result<Vec<String>> {
    Ok(store
        .list_images()
        .context("listing images")?
        .into_iter()
        .filter(|r| r.config_digest == *config_digest)
        .map(|r| r.name)
        .collect())
}

pub fn run_rmi(args: RmiArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let mut failed = false;
    for name in &args.images {
        let Some(found) = find_image(&store, name)? else {
            eprintln!("Error: No such image: {name}");
            failed = true;
            continue;
        };
        let config_digest = found.record.config_digest.clone();
        let to_untag = if found.by_name {
            vec![found.record.name.clone()]
        } else {
            let names = names_of(&store, &config_digest)?;
            if !args.force && !single_repository(&names) {
                eprintln!(
                    "Error: conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    short_id(&config_digest)
                );
                failed = true;
                continue;
            }
            names
        };
        for untag in &to_untag {
            if store
                .untag(untag)
                .with_context(|| format!("removing {}", familiar(untag)))?
            {
                println!("Untagged: {}", familiar(untag));
            }
        }
        if names_of(&store, &config_digest)?.is_empty() {
            println!("Deleted: {config_digest}");
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The image's container config in the shape `docker image inspect` prints it: Docker's key
/// order, with the fields Docker always prints present (empty when unset), so templates such as
/// `{{.Config.User}}` give what they give with Docker.
fn docker_container_config(generated: Value) -> Value {
    // (key, value when unset or None when Docker leaves the key out when unset).
    let layout: [(&str, Option<Value>); 25] = [
        ("Hostname", Some(json!(""))),
        ("Domainname", Some(json!(""))),
        ("User", Some(json!(""))),
        ("AttachStdin", Some(json!(false))),
        ("AttachStdout", Some(json!(false))),
        ("AttachStderr", Some(json!(false))),
        ("ExposedPorts", None),
        ("Tty", Some(json!(false))),
        ("OpenStdin", Some(json!(false))),
        ("StdinOnce", Some(json!(false))),
        ("Env", Some(Value::Null)),
        ("Cmd", Some(Value::Null)),
        ("Healthcheck", None),
        ("ArgsEscaped", None),
        ("Image", Some(json!(""))),
        ("Volumes", Some(Value::Null)),
        ("WorkingDir", Some(json!(""))),
        ("Entrypoint", Some(Value::Null)),
        ("NetworkDisabled", None),
        ("MacAddress", None),
        ("OnBuild", Some(Value::Null)),
        ("Labels", Some(Value::Null)),
        ("StopSignal", None),
        ("StopTimeout", None),
        ("Shell", None),
    ];
    let mut fields = match generated {
        Value::Object(fields) => fields,
        other => return other,
    };
    let mut out = Map::new();
    for (key, unset) in layout {
        match fields.remove(key) {
            Some(value) => {
                out.insert(key.to_string(), value);
            }
            None => {
                if let Some(unset) = unset {
                    out.insert(key.to_string(), unset);
                }
            }
        }
    }
    // Whatever else the image carries, after Docker's own fields.
    out.extend(fields);
    Value::Object(out)
}

/// The `docker image inspect` document for one image.
fn inspect_document(store: &Store, found: &StoredImage) -> anyhow::Result<Value> {
    let record = &found.record;
    let config = read_config(store, &record.config_digest)?;
    let manifest = read_manifest(store, record)?;
    let all: Vec<ImageRecord> = store
        .list_images()
        .context("listing images")?
        .into_iter()
        .filter(|r| r.config_digest == record.config_digest)
        .collect();
    let mut repo_tags = Vec::new();
    let mut repo_digests = Vec::new();
    for other in &all {
        let Ok(reference) = Reference::parse(&other.name) else {
            continue;
        };
        if reference.tag().is_some() {
            repo_tags.push(familiar(&other.name));
        }
        let pinned = format!("{}@{}", reference.familiar_name(), other.manifest_digest);
        if !repo_digests.contains(&pinned) {
            repo_digests.push(pinned);
        }
    }
    let last_tag_ns = all.iter().map(|r| r.updated_ns).max().unwrap_or(0);
    let container_config = docker_container_config(
        serde_json::to_value(&config.config).context("serialising the container config")?,
    );
    let mut document = Map::new();
    document.insert("Id".into(), json!(record.config_digest.to_string()));
    document.insert("RepoTags".into(), json!(repo_tags));
    document.insert("RepoDigests".into(), json!(repo_digests));
    document.insert("Parent".into(), json!(""));
    document.insert(
        "Comment".into(),
        json!(
            config
                .history
                .last()
                .map(|h| h.comment.clone())
                .unwrap_or_default()
        ),
    );
    document.insert(
        "Created".into(),
        json!(config.created.clone().unwrap_or_default()),
    );
    document.insert("DockerVersion".into(), json!(""));
    document.insert("Author".into(), json!(config.author));
    document.insert("Config".into(), container_config);
    document.insert("Architecture".into(), json!(config.architecture));
    if !config.variant.is_empty() {
        document.insert("Variant".into(), json!(config.variant));
    }
    document.insert("Os".into(), json!(config.os));
    if !config.os_version.is_empty() {
        document.insert("OsVersion".into(), json!(config.os_version));
    }
    document.insert(
        "Size".into(),
        json!(manifest.layers.iter().map(|l| l.size).sum::<u64>()),
    );
    document.insert(
        "RootFS".into(),
        json!({"Type": config.rootfs.kind, "Layers": config.rootfs.diff_ids}),
    );
    document.insert(
        "Metadata".into(),
        json!({"LastTagTime": format_ns(last_tag_ns)}),
    );
    Ok(Value::Object(document))
}

pub fn run_inspect(args: InspectArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let mut documents = Vec::new();
    let mut failed = false;
    for name in &args.images {
        match find_image(&store, name)? {
            Some(found) => documents.push(
                inspect_document(&store, &found).with_context(|| format!("inspecting {name}"))?,
            ),
            None => {
                eprintln!("Error: No such image: {name}");
                failed = true;
            }
        }
    }
    match &args.format {
        Some(format) => {
            let mut out = String::new();
            for document in &documents {
                out.push_str(&render_template(format, document)?);
                out.push('\n');
            }
            print!("{out}");
        }
        None => print_json_indented(&Value::Array(documents))?,
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Docker's `Ellipsis`: at most `max` characters, the last replaced by `…` when cut.
fn ellipsis(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// One row of `kiln history`, oldest first before reversal.
struct HistoryRow {
    created: Option<String>,
    created_by: String,
    size: u64,
    comment: String,
}

/// Pairs the config's history with the manifest's layers: every entry that is not an
/// `empty_layer` owns the next layer. Without history, one row per layer.
fn history_rows(config: &ImageConfig, manifest: &ManifestRecord) -> Vec<HistoryRow> {
    let mut layers = manifest.layers.iter();
    if config.history.is_empty() {
        return layers
            .map(|layer| HistoryRow {
                created: config.created.clone(),
                created_by: String::new(),
                size: layer.size,
                comment: String::new(),
            })
            .collect();
    }
    config
        .history
        .iter()
        .map(|entry| HistoryRow {
            created: entry.created.clone(),
            created_by: entry.created_by.clone(),
            size: if entry.empty_layer {
                0
            } else {
                layers.next().map(|l| l.size).unwrap_or(0)
            },
            comment: entry.comment.clone(),
        })
        .collect()
}

pub fn run_history(args: HistoryArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let found = require_image(&store, &args.image)?;
    let config = read_config(&store, &found.record.config_digest)?;
    let manifest = read_manifest(&store, &found.record)?;
    let mut rows = history_rows(&config, &manifest);
    rows.reverse();
    let id = if args.no_trunc {
        found.record.config_digest.to_string()
    } else {
        short_id(&found.record.config_digest).to_string()
    };
    let ids: Vec<String> = (0..rows.len())
        .map(|i| {
            if i == 0 {
                id.clone()
            } else {
                "<missing>".to_string()
            }
        })
        .collect();
    if args.quiet {
        for id in ids {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .zip(ids)
        .map(|(row, id)| {
            let created_by = row.created_by.replace('\t', " ");
            vec![
                id,
                created_since(row.created.as_deref()),
                if args.no_trunc {
                    created_by
                } else {
                    ellipsis(&created_by, 45)
                },
                human_size(row.size),
                row.comment.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        render_table(
            &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
            &table
        )
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run_prune(args: PruneArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let options = PruneOptions {
        dry_run: args.dry_run,
        no_wait: false,
        cache_unused_for: (args.cache || args.all).then_some(Duration::ZERO),
        cache_mounts: args.all,
    };
    let report = store.prune(&options).context("pruning the store")?;
    let verb = if args.dry_run {
        "Would delete"
    } else {
        "Deleted"
    };
    let mut out = String::new();
    if !report.removed_blobs.is_empty() {
        let _ = writeln!(out, "{verb} blobs:");
        for digest in &report.removed_blobs {
            let _ = writeln!(out, "{digest}");
        }
    }
    if !report.removed_layers.is_empty() {
        let _ = writeln!(out, "{verb} layers:");
        for chain_id in &report.removed_layers {
            let _ = writeln!(out, "{chain_id}");
        }
    }
    let counts = [
        (
            report.removed_orphan_layer_dirs,
            "orphaned layer directories",
        ),
        (report.removed_cache_records, "build cache records"),
        (report.removed_stale_leases, "stale leases"),
        (report.removed_cache_mounts, "cache mounts"),
    ];
    for (count, what) in counts {
        if count > 0 {
            let _ = writeln!(out, "{verb} {count} {what}");
        }
    }
    let total = if args.dry_run {
        "Total space that would be reclaimed"
    } else {
        "Total reclaimed space"
    };
    let _ = writeln!(out, "{total}: {}", human_size(report.bytes_freed));
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_docker_prints_them() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1234), "1.23kB");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(4_261_376), "4.26MB");
        assert_eq!(human_size(77_800_000), "77.8MB");
        assert_eq!(human_size(120_000_000), "120MB");
        assert_eq!(human_size(1_500_000_000), "1.5GB");
    }

    #[test]
    fn durations_read_as_docker_writes_them() {
        let secs = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(secs(1)), "1 second");
        assert_eq!(human_duration(secs(42)), "42 seconds");
        assert_eq!(human_duration(secs(61)), "About a minute");
        assert_eq!(human_duration(secs(150)), "2 minutes");
        assert_eq!(human_duration(secs(3600)), "About an hour");
        assert_eq!(human_duration(secs(5 * 3600)), "5 hours");
        assert_eq!(human_duration(secs(3 * 86400)), "3 days");
        assert_eq!(human_duration(secs(20 * 86400)), "2 weeks");
        assert_eq!(human_duration(secs(90 * 86400)), "3 months");
        assert_eq!(human_duration(secs(3 * 365 * 86400)), "3 years");
    }

    #[test]
    fn tables_pad_columns_like_docker() {
        let table = render_table(
            &["REPOSITORY", "TAG", "SIZE"],
            &[vec!["busybox".into(), "latest".into(), "1.2MB".into()]],
        );
        assert_eq!(
            table,
            "REPOSITORY   TAG       SIZE\nbusybox      latest    1.2MB\n"
        );
    }

    #[test]
    fn templates_select_fields_and_print_like_go() {
        let value = json!({"Id": "sha256:ab", "Config": {"Env": ["A=1", "B=2"], "Labels": {"b": "2", "a": "1"}}});
        assert_eq!(render_template("{{.Id}}", &value).unwrap(), "sha256:ab");
        assert_eq!(
            render_template("env={{ .Config.Env }}", &value).unwrap(),
            "env=[A=1 B=2]"
        );
        assert_eq!(
            render_template("{{.Config.Labels}}", &value).unwrap(),
            "map[a:1 b:2]"
        );
        assert_eq!(
            render_template("{{json .Config.Env}}", &value).unwrap(),
            r#"["A=1","B=2"]"#
        );
        assert_eq!(
            render_template("{{.Missing}}", &value).unwrap(),
            "<no value>"
        );
        assert!(render_template("{{range .Config.Env}}", &value).is_err());
        assert!(render_template("{{.Id", &value).is_err());
    }

    #[test]
    fn inspect_config_has_dockers_fields_in_dockers_order() {
        let config = docker_container_config(json!({
            "Env": ["A=1"], "Cmd": ["sh"], "Labels": {"x": "y"}, "Custom": 1
        }));
        let keys: Vec<&str> = config
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "Hostname",
                "Domainname",
                "User",
                "AttachStdin",
                "AttachStdout",
                "AttachStderr",
                "Tty",
                "OpenStdin",
                "StdinOnce",
                "Env",
                "Cmd",
                "Image",
                "Volumes",
                "WorkingDir",
                "Entrypoint",
                "OnBuild",
                "Labels",
                "Custom"
            ]
        );
        assert_eq!(config["User"], "");
        assert_eq!(config["Entrypoint"], Value::Null);
        assert_eq!(config["Cmd"], json!(["sh"]));
        assert_eq!(
            render_template("[{{.User}}]", &config).unwrap(),
            "[]",
            "an unset user prints as Docker prints it"
        );
    }

    #[test]
    fn created_by_is_cut_with_an_ellipsis() {
        assert_eq!(ellipsis("short", 45), "short");
        let long = "x".repeat(50);
        let cut = ellipsis(&long, 45);
        assert_eq!(cut.chars().count(), 45);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn names_split_into_docker_columns() {
        assert_eq!(
            name_columns("docker.io/library/busybox:latest"),
            ("busybox".to_string(), "latest".to_string(), None)
        );
        assert_eq!(
            name_columns("127.0.0.1:5000/app:v1"),
            ("127.0.0.1:5000/app".to_string(), "v1".to_string(), None)
        );
        assert!(single_repository(&[
            "docker.io/library/a:1".into(),
            "docker.io/library/a:2".into()
        ]));
        assert!(!single_repository(&[
            "docker.io/library/a:1".into(),
            "docker.io/library/b:1".into()
        ]));
    }
}
