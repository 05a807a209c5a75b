//! Typed Dockerfile instructions: what the parser produces and lowering consumes.
//!
//! Words are kept as written (unexpanded): variables are expanded during lowering, with the ARG/ENV
//! environment in effect at that step, because that environment depends on the stage, the build args
//! and the base image. Flags whose values may hold variables (`--mount`, `--chown`, `--from`, …) are
//! likewise kept as strings; `RUN --mount` values are parsed by [`parse_mount`] after expansion.

use std::time::Duration;

/// Where an instruction sits in its file: 1-based, inclusive line numbers (a continued instruction
/// and its heredoc bodies span several lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    pub start_line: usize,
    pub end_line: usize,
}

/// A whole parsed Dockerfile.
#[derive(Debug, Clone, PartialEq)]
pub struct Dockerfile {
    pub directives: Directives,
    /// ARGs declared before the first FROM: usable in FROM lines, and in a stage that re-declares them.
    pub meta_args: Vec<ArgInstruction>,
    pub stages: Vec<Stage>,
    /// Non-fatal findings (empty continuation lines, …), reported to the user as warnings.
    pub warnings: Vec<Warning>,
}

/// Parser directives from the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    pub syntax: Option<String>,
    /// `\` by default, or `` ` ``.
    pub escape: char,
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub location: Location,
    pub message: String,
}

/// One `FROM` and the instructions up to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub from: FromInstruction,
    pub location: Location,
    pub instructions: Vec<Instruction>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    pub kind: InstructionKind,
    pub location: Location,
    /// The instruction's source text with continuations joined (no heredoc bodies), as Docker shows
    /// it in history entries and progress output, e.g. `RUN make all`.
    pub original: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InstructionKind {
    Run(RunInstruction),
    Cmd(CommandForm),
    Entrypoint(CommandForm),
    /// `LABEL k=v ...`: keys and values unexpanded, quotes still in place.
    Label(Vec<KeyValue>),
    Maintainer(String),
    /// Port specs as written (`80`, `53/udp`, `$PORT`).
    Expose(Vec<String>),
    Env(Vec<KeyValue>),
    Add(CopyInstruction),
    Copy(CopyInstruction),
    Volume(Vec<String>),
    User(String),
    Workdir(String),
    Arg(ArgInstruction),
    Onbuild(OnbuildInstruction),
    StopSignal(String),
    Healthcheck(Healthcheck),
    Shell(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromInstruction {
    /// The image word as written (`golang:${GO_VERSION}`, `scratch`, a stage name).
    pub image: String,
    /// `AS name`, lower-cased as Docker does.
    pub name: Option<String>,
    /// `--platform=...`, unexpanded.
    pub platform: Option<String>,
}

/// The shell form (one string, run with the SHELL in effect) or the exec (JSON) form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandForm {
    Shell(String),
    Exec(Vec<String>),
}

/// A heredoc attached to RUN, COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter with quotes removed.
    pub name: String,
    /// The body as written (lines with their `\n`), before tab stripping and expansion.
    pub content: String,
    /// False when any part of the delimiter was quoted: the body is then not expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body's lines when it is used.
    pub chomp: bool,
    /// The file descriptor written before `<<` (`3<<EOF`), if any.
    pub fd: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInstruction {
    pub command: CommandForm,
    pub heredocs: Vec<Heredoc>,
    /// Raw `--mount=` values, unexpanded; see [`parse_mount`].
    pub mounts: Vec<String>,
    /// `--network=default|none|host`, unexpanded.
    pub network: Option<String>,
    /// `--security=insecure|sandbox`.
    pub security: Option<String>,
}

/// COPY and ADD share their shape; some flags belong to one of them only (the parser rejects the
/// others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInstruction {
    /// Source words as written (wildcards, `<<EOF` heredoc references, URLs for ADD).
    pub sources: Vec<String>,
    pub dest: String,
    pub heredocs: Vec<Heredoc>,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub excludes: Vec<String>,
    pub parents: bool,
    /// ADD only: `--checksum=sha256:...`.
    pub checksum: Option<String>,
    /// ADD only: `--keep-git-dir[=bool]`.
    pub keep_git_dir: bool,
    /// ADD only: `--unpack[=bool]`; `None` means Docker's default (local archives are unpacked,
    /// remote ones are not).
    pub unpack: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// One `ARG` line; it may declare several names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgInstruction {
    pub args: Vec<ArgDecl>,
    pub location: Location,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    /// The default as written (unexpanded, quotes in place), if any.
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OnbuildInstruction {
    /// The trigger text as Docker stores it in the image config's `OnBuild` list (everything after
    /// `ONBUILD `, continuations joined).
    pub trigger: String,
    /// The trigger parsed as an instruction (never ONBUILD, FROM or MAINTAINER).
    pub instruction: Box<Instruction>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disables a healthcheck inherited from the base image.
    None,
    Cmd {
        command: CommandForm,
        interval: Option<Duration>,
        timeout: Option<Duration>,
        start_period: Option<Duration>,
        start_interval: Option<Duration>,
        retries: Option<u32>,
    },
}

/// A parsed `RUN --mount=` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountKind,
    /// Where it appears in the sandbox (for secrets and ssh a default applies when unset).
    pub target: Option<String>,
    /// `source=` path inside the `from` (or the context).
    pub source: Option<String>,
    /// `from=`: a stage name or index, an image, or a named build context.
    pub from: Option<String>,
    pub read_only: bool,
    /// cache: `id=`; secret and ssh: `id=`.
    pub id: Option<String>,
    pub sharing: Option<CacheSharing>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// File mode, e.g. 0o755 for cache mounts, 0o400 for secrets.
    pub mode: Option<u32>,
    /// tmpfs: `size=` in bytes.
    pub size: Option<u64>,
    /// secret and ssh: `required=`.
    pub required: bool,
    /// secret: `env=` exposes it as an environment variable instead of (or besides) a file.
    pub env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

/// Why a `RUN --mount=` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    #[error("invalid mount {value:?}: unterminated quote")]
    UnterminatedQuote { value: String },
    #[error("unsupported mount type {0:?} (expected bind, cache, tmpfs, secret or ssh)")]
    UnknownType(String),
    #[error("unexpected key '{key}' in '{field}'{}", did_you_mean_key(.suggestion))]
    UnknownKey {
        key: String,
        field: String,
        suggestion: Option<String>,
    },
    #[error("invalid field '{0}' must be a key=value pair")]
    MissingValue(String),
    #[error("invalid value for {key}: {value:?} ({expected})")]
    InvalidValue {
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("unexpected key '{key}' for mount type '{kind}'")]
    KeyNotForType { key: String, kind: &'static str },
    #[error("invalid secret mount: one of target, id or env is required")]
    SecretWithoutId,
    #[error("{kind} mounts cannot come from another stage or image (from={from})")]
    FromNotAllowed { kind: &'static str, from: String },
}

fn did_you_mean_key(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(key) => format!(" (did you mean {key}?)"),
        None => String::new(),
    }
}

impl MountKind {
    /// The name used in `type=`.
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Bind => "bind",
            MountKind::Cache => "cache",
            MountKind::Tmpfs => "tmpfs",
            MountKind::Secret => "secret",
            MountKind::Ssh => "ssh",
        }
    }
}

/// Splits a mount value into CSV fields (Go's `encoding/csv` on one record): commas separate
/// fields; a field that starts with `"` is quoted, `""` inside it is a literal quote.
fn mount_fields(value: &str) -> Result<Vec<String>, MountError> {
    let mut fields = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(MountError::UnterminatedQuote {
                            value: value.to_string(),
                        });
                    }
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            // Text between the closing quote and the next comma is kept, leniently.
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                field.push(c);
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                field.push(c);
                chars.next();
            }
        }
        fields.push(field);
        if chars.next().is_none() {
            break;
        }
    }
    Ok(fields)
}

/// Parses a boolean the way Go's `strconv.ParseBool` does.
fn parse_go_bool(key: &str, value: &str) -> Result<bool, MountError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(MountError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            expected: "true or false",
        }),
    }
}

/// Parses a size with an optional binary unit as Docker's `units.RAMInBytes` does: `1024`,
/// `64k`, `64m`, `1.5g`, `1GiB`, `512MB` (k/m/g/t/p are powers of 1024).
fn parse_ram_size(key: &str, value: &str) -> Result<u64, MountError> {
    let bad = || MountError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        expected: "a size such as 64m or 1g",
    };
    let number_len = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(number_len);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    let number: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let multiplier: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0f64.powi(4),
        "p" => 1024.0f64.powi(5),
        _ => return Err(bad()),
    };
    let bytes = number * multiplier;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

fn parse_u32(
    key: &str,
    value: &str,
    radix: u32,
    expected: &'static str,
) -> Result<u32, MountError> {
    u32::from_str_radix(value, radix).map_err(|_| MountError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        expected,
    })
}

/// Parses an (already expanded) `RUN --mount=` value: comma-separated `key=value` fields as
/// BuildKit reads them. `type` is `bind` unless given; keys are case-insensitive.
///
/// Defaults filled in: bind and secret/ssh mounts are read-only unless `rw`; cache mounts get
/// `sharing=shared` and mode 0755; secrets get `id` = base name of `target` (or the reverse:
/// `target=/run/secrets/<id>` unless only `env=` is asked for) and mode 0400; ssh mounts get
/// `id=default` and mode 0600 (their target depends on how many ssh mounts the RUN has, so it
/// is left to lowering).
///
/// Fails on unknown keys or types, a field without `=` (other than `ro`/`rw`/`required`),
/// values that do not parse (`uid`, `gid`, octal `mode`, tmpfs `size`, booleans, `sharing`),
/// keys that do not belong to the mount type, a secret with neither target, id nor env, and
/// `from=` on secret/ssh mounts.
pub fn parse_mount(value: &str) -> Result<Mount, MountError> {
    const KEYS: &[&str] = &[
        "type",
        "from",
        "source",
        "src",
        "target",
        "dst",
        "destination",
        "dest",
        "readonly",
        "ro",
        "readwrite",
        "rw",
        "id",
        "sharing",
        "required",
        "size",
        "mode",
        "uid",
        "gid",
        "env",
    ];
    let fields = mount_fields(value)?;
    // The type decides which keys are allowed and the defaults, so read it first.
    let mut kind = MountKind::Bind;
    for field in &fields {
        if let Some((key, kind_value)) = field.split_once('=')
            && key.trim().eq_ignore_ascii_case("type")
        {
            kind = match kind_value.to_ascii_lowercase().as_str() {
                "bind" => MountKind::Bind,
                "cache" => MountKind::Cache,
                "tmpfs" => MountKind::Tmpfs,
                "secret" => MountKind::Secret,
                "ssh" => MountKind::Ssh,
                _ => return Err(MountError::UnknownType(kind_value.to_string())),
            };
        }
    }
    let mut mount = Mount {
        kind,
        target: None,
        source: None,
        from: None,
        read_only: false,
        id: None,
        sharing: None,
        uid: None,
        gid: None,
        mode: None,
        size: None,
        required: false,
        env: None,
    };
    let mut read_only: Option<bool> = None;
    let secret_or_ssh = matches!(kind, MountKind::Secret | MountKind::Ssh);
    let not_for_type = |key: &str| MountError::KeyNotForType {
        key: key.to_string(),
        kind: kind.as_str(),
    };
    for field in &fields {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        let Some((key, val)) = field.split_once('=') else {
            match field.to_ascii_lowercase().as_str() {
                "readonly" | "ro" => read_only = Some(true),
                "readwrite" | "rw" => read_only = Some(false),
                "required" if secret_or_ssh => mount.required = true,
                "required" => return Err(not_for_type("required")),
                _ => return Err(MountError::MissingValue(field.to_string())),
            }
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        match key.as_str() {
            "type" => {}
            "target" | "dst" | "destination" | "dest" => mount.target = Some(val.to_string()),
            "source" | "src" => mount.source = Some(val.to_string()),
            "from" => mount.from = Some(val.to_string()),
            "readonly" | "ro" => read_only = Some(parse_go_bool(&key, val)?),
            "readwrite" | "rw" => read_only = Some(!parse_go_bool(&key, val)?),
            "required" if secret_or_ssh => mount.required = parse_go_bool(&key, val)?,
            "required" => return Err(not_for_type("required")),
            "id" => mount.id = Some(val.to_string()),
            "sharing" if kind == MountKind::Cache => {
                mount.sharing = Some(match val.to_ascii_lowercase().as_str() {
                    "shared" => CacheSharing::Shared,
                    "private" => CacheSharing::Private,
                    "locked" => CacheSharing::Locked,
                    _ => {
                        return Err(MountError::InvalidValue {
                            key,
                            value: val.to_string(),
                            expected: "shared, private or locked",
                        });
                    }
                })
            }
            "sharing" => return Err(not_for_type("sharing")),
            "mode" | "uid" | "gid" if matches!(kind, MountKind::Bind | MountKind::Tmpfs) => {
                return Err(not_for_type(&key));
            }
            "mode" => mount.mode = Some(parse_u32(&key, val, 8, "an octal mode such as 0755")?),
            "uid" => mount.uid = Some(parse_u32(&key, val, 10, "a numeric user id")?),
            "gid" => mount.gid = Some(parse_u32(&key, val, 10, "a numeric group id")?),
            "size" if kind == MountKind::Tmpfs => mount.size = Some(parse_ram_size(&key, val)?),
            "size" => return Err(not_for_type("size")),
            "env" if kind == MountKind::Secret => mount.env = Some(val.to_string()),
            "env" => return Err(not_for_type("env")),
            _ => {
                let suggestion = crate::parser::suggest::suggest(&key, KEYS).map(str::to_string);
                return Err(MountError::UnknownKey {
                    key,
                    field: field.to_string(),
                    suggestion,
                });
            }
        }
    }
    mount.read_only = read_only.unwrap_or(!matches!(kind, MountKind::Cache | MountKind::Tmpfs));
    match kind {
        MountKind::Cache => {
            mount.sharing.get_or_insert(CacheSharing::Shared);
            mount.mode.get_or_insert(0o755);
        }
        MountKind::Secret => {
            if let Some(from) = &mount.from {
                return Err(MountError::FromNotAllowed {
                    kind: "secret",
                    from: from.clone(),
                });
            }
            if mount.id.is_none() {
                let base = mount
                    .target
                    .as_deref()
                    .and_then(|t| t.rsplit('/').find(|part| !part.is_empty()))
                    .map(str::to_string);
                mount.id = base;
            }
            match (&mount.id, &mount.target, &mount.env) {
                (None, _, None) => return Err(MountError::SecretWithoutId),
                (Some(id), None, None) => mount.target = Some(format!("/run/secrets/{id}")),
                _ => {}
            }
            mount.mode.get_or_insert(0o400);
        }
        MountKind::Ssh => {
            if let Some(from) = &mount.from {
                return Err(MountError::FromNotAllowed {
                    kind: "ssh",
                    from: from.clone(),
                });
            }
            mount.id.get_or_insert_with(|| "default".to_string());
            mount.mode.get_or_insert(0o600);
        }
        MountKind::Bind | MountKind::Tmpfs => {}
    }
    Ok(mount)
}

#[cfg(test)]
mod mount_tests {
    use super::*;

    #[test]
    fn bind_is_default_and_read_only() {
        let m = parse_mount("target=/src,source=.,from=build").unwrap();
        assert_eq!(m.kind, MountKind::Bind);
        assert!(m.read_only);
        assert_eq!(m.target.as_deref(), Some("/src"));
        assert_eq!(m.source.as_deref(), Some("."));
        assert_eq!(m.from.as_deref(), Some("build"));
        let m = parse_mount("type=bind,dst=/x,rw").unwrap();
        assert!(!m.read_only);
        let m = parse_mount("type=bind,destination=/x,readwrite=true").unwrap();
        assert!(!m.read_only);
    }

    #[test]
    fn cache_defaults_and_options() {
        let m = parse_mount("type=cache,target=/root/.cache").unwrap();
        assert_eq!(m.sharing, Some(CacheSharing::Shared));
        assert_eq!(m.mode, Some(0o755));
        assert!(!m.read_only);
        let m = parse_mount(
            "type=cache,id=go,target=/go,sharing=locked,uid=1000,gid=1000,mode=0700,ro",
        )
        .unwrap();
        assert_eq!(m.id.as_deref(), Some("go"));
        assert_eq!(m.sharing, Some(CacheSharing::Locked));
        assert_eq!(
            (m.uid, m.gid, m.mode),
            (Some(1000), Some(1000), Some(0o700))
        );
        assert!(m.read_only);
    }

    #[test]
    fn tmpfs_size_units() {
        assert_eq!(
            parse_mount("type=tmpfs,target=/t,size=64m").unwrap().size,
            Some(64 << 20)
        );
        assert_eq!(
            parse_mount("type=tmpfs,target=/t,size=1GiB").unwrap().size,
            Some(1 << 30)
        );
        assert_eq!(
            parse_mount("type=tmpfs,target=/t,size=4096").unwrap().size,
            Some(4096)
        );
        assert!(parse_mount("type=tmpfs,target=/t,size=lots").is_err());
        assert!(parse_mount("type=bind,target=/t,size=1m").is_err());
    }

    #[test]
    fn secret_defaults() {
        let m = parse_mount("type=secret,id=aws").unwrap();
        assert_eq!(m.target.as_deref(), Some("/run/secrets/aws"));
        assert_eq!(m.mode, Some(0o400));
        assert!(m.read_only);
        let m = parse_mount("type=secret,target=/root/.npmrc,required").unwrap();
        assert_eq!(m.id.as_deref(), Some(".npmrc"));
        assert!(m.required);
        let m = parse_mount("type=secret,id=tok,env=TOKEN").unwrap();
        assert_eq!(m.env.as_deref(), Some("TOKEN"));
        assert_eq!(m.target, None);
        assert_eq!(parse_mount("type=secret"), Err(MountError::SecretWithoutId));
        assert!(parse_mount("type=secret,id=a,from=x").is_err());
    }

    #[test]
    fn ssh_defaults() {
        let m = parse_mount("type=ssh,required=true").unwrap();
        assert_eq!(m.id.as_deref(), Some("default"));
        assert_eq!(m.mode, Some(0o600));
        assert!(m.required);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse_mount("type=nfs"),
            Err(MountError::UnknownType(_))
        ));
        let err = parse_mount("type=cache,taget=/x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unexpected key 'taget' in 'taget=/x' (did you mean target?)"
        );
        assert!(matches!(
            parse_mount("target"),
            Err(MountError::MissingValue(_))
        ));
        assert!(parse_mount("type=cache,target=/x,mode=999").is_err());
        assert!(parse_mount("type=cache,target=/x,uid=-1").is_err());
        assert!(parse_mount("type=cache,target=/x,sharing=everyone").is_err());
        assert!(parse_mount("type=bind,target=/x,required").is_err());
        assert!(parse_mount("type=bind,target=/x,ro=maybe").is_err());
        assert!(parse_mount("\"type=cache").is_err());
    }

    #[test]
    fn csv_quoting() {
        let m = parse_mount("type=bind,\"target=/a,b\",src=x").unwrap();
        assert_eq!(m.target.as_deref(), Some("/a,b"));
    }
}
