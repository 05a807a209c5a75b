//! Small value rules lowering needs: image reference normalisation (`alpine` →
//! `docker.io/library/alpine:latest`), platform strings (`linux/arm/v7`), paths relative to the
//! working directory, `--chown`/`--chmod` values, port specs and signals, and the Go formatting
//! (`%q`, `%v`, durations) BuildKit uses in history entries.

use std::time::Duration;

use kiln_llb::{Chmod, Chown, Platform, UserSpec};

/// Normalises an image reference the way Docker does: default registry `docker.io`, `library/`
/// for official images, tag `latest` when neither tag nor digest is given (the rules live in
/// `kiln_image::reference`).
///
/// # Errors
/// A message when the reference is not a valid image name.
pub fn normalize_reference(reference: &str) -> Result<String, String> {
    kiln_image::Reference::parse(reference)
        .map(|parsed| parsed.with_default_tag().to_string())
        .map_err(|error| error.to_string())
}

/// Parses `os[/arch[/variant]]` (or a lone OS or architecture) with containerd's normalisation
/// (`x86_64` → `amd64`, `arm` → `arm/v7`, …) as `kiln_image::platform` implements it; a lone OS
/// takes the architecture of `build`.
///
/// # Errors
/// A message when the value is not a platform.
pub fn parse_platform(value: &str, build: &Platform) -> Result<Platform, String> {
    let parsed = kiln_image::Platform::parse(value).map_err(|error| error.to_string())?;
    let lone_os = !value.contains('/') && parsed.os.eq_ignore_ascii_case(value);
    Ok(if lone_os {
        Platform {
            os: parsed.os,
            architecture: build.architecture.clone(),
            variant: build.variant.clone(),
        }
    } else {
        Platform {
            os: parsed.os,
            architecture: parsed.architecture,
            variant: parsed.variant,
        }
    })
}

/// `os/arch[/variant]`.
pub fn format_platform(platform: &Platform) -> String {
    platform.to_string()
}

/// Cleans a slash path like Go's `path.Clean` (no trailing slash except for `/`).
pub fn clean_path(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// The absolute working directory after `WORKDIR requested` in `current`.
pub fn normalize_workdir(current: &str, requested: &str) -> String {
    if requested.starts_with('/') {
        clean_path(requested)
    } else {
        clean_path(&format!("/{current}/{requested}"))
    }
}

/// A COPY/ADD destination made absolute against the working directory; a trailing `/` (or a
/// destination of `.`) is kept because it means "into this directory".
pub fn dest_relative_to_workdir(cwd: &str, dest: &str) -> String {
    let dest = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    let keep_slash = dest.ends_with('/') || dest.ends_with("/.");
    let joined = if dest.starts_with('/') {
        clean_path(dest)
    } else {
        clean_path(&format!("{cwd}/{dest}"))
    };
    if keep_slash && joined != "/" {
        format!("{joined}/")
    } else {
        joined
    }
}

/// Parses `user[:group]` (names or numeric ids) as `--chown` and WORKDIR's owner take it.
///
/// # Errors
/// A message when the user part is empty.
pub fn parse_chown(value: &str) -> Result<Chown, String> {
    let (user, group) = match value.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (value, None),
    };
    if user.is_empty() {
        return Err(format!("invalid user {value:?}: the user part is empty"));
    }
    let spec = |text: &str| match text.parse::<u32>() {
        Ok(id) => UserSpec::Id(id),
        Err(_) => UserSpec::Name(text.to_string()),
    };
    Ok(Chown {
        user: Some(spec(user)),
        group: group.filter(|group| !group.is_empty()).map(spec),
    })
}

/// Parses a `--chmod` value: octal up to `07777`, or a symbolic mode (`u+x,go-w`, `a=rX`).
///
/// # Errors
/// A message saying what is wrong with the value.
pub fn parse_chmod(value: &str) -> Result<Chmod, String> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return match u32::from_str_radix(value, 8) {
            Ok(mode) if mode <= 0o7777 => Ok(Chmod::Octal(mode)),
            _ => Err(format!(
                "invalid chmod parameter: '{value}'. it should be octal string and between 0 and 07777"
            )),
        };
    }
    let clause_ok = |clause: &str| {
        let who_end = clause
            .find(|c: char| !matches!(c, 'u' | 'g' | 'o' | 'a'))
            .unwrap_or(clause.len());
        let rest = &clause[who_end..];
        if rest.is_empty() {
            return false;
        }
        // One or more `op perms` groups, perms from rwxXst or a single copy source (ugo).
        let mut chars = rest.chars().peekable();
        let mut groups = 0;
        while let Some(op) = chars.next() {
            if !matches!(op, '+' | '-' | '=') {
                return false;
            }
            groups += 1;
            while let Some(&c) = chars.peek() {
                if matches!(c, 'r' | 'w' | 'x' | 'X' | 's' | 't' | 'u' | 'g' | 'o') {
                    chars.next();
                } else {
                    break;
                }
            }
        }
        groups > 0
    };
    if !value.is_empty() && value.split(',').all(clause_ok) {
        Ok(Chmod::Symbolic(value.to_string()))
    } else {
        Err(format!(
            "invalid chmod parameter: '{value}'. it should be octal string and between 0 and \
             07777, or a symbolic mode such as u+x"
        ))
    }
}

/// Expands an EXPOSE spec (`80`, `53/udp`, `8000-8002/tcp`, `127.0.0.1:80:80`) into
/// `port/proto` entries.
///
/// # Errors
/// A message for a bad protocol, port or range.
pub fn parse_port_spec(raw: &str) -> Result<Vec<String>, String> {
    let parts: Vec<&str> = raw.split(':').collect();
    let container = parts[parts.len() - 1];
    let host_port = if parts.len() >= 2 {
        Some(parts[parts.len() - 2])
    } else {
        None
    };
    let (port, proto) = match container.split_once('/') {
        Some((port, proto)) => (port, proto.to_lowercase()),
        None => (container, String::new()),
    };
    if port.is_empty() {
        return Err(format!("no port specified: {raw}<empty>"));
    }
    let proto = match proto.as_str() {
        "" => "tcp".to_string(),
        "tcp" | "udp" | "sctp" => proto,
        other => return Err(format!("invalid proto: {other}")),
    };
    let (start, end) =
        parse_port_range(port).map_err(|_| format!("invalid containerPort: {port}"))?;
    if let Some(host) = host_port.filter(|host| !host.is_empty()) {
        let (host_start, host_end) =
            parse_port_range(host).map_err(|_| format!("invalid hostPort: {host}"))?;
        if end - start != host_end - host_start && end != start {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {port} and {host}"
            ));
        }
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

fn parse_port_range(ports: &str) -> Result<(u32, u32), ()> {
    let parse = |text: &str| text.parse::<u16>().map(u32::from).map_err(|_| ());
    match ports.split_once('-') {
        None => parse(ports).map(|p| (p, p)),
        Some((start, end)) => {
            let (start, end) = (parse(start)?, parse(end)?);
            if end < start {
                Err(())
            } else {
                Ok((start, end))
            }
        }
    }
}

/// Whether `value` is a signal Docker accepts for STOPSIGNAL: a number or a known name, with or
/// without `SIG`.
pub fn valid_signal(value: &str) -> bool {
    if let Ok(number) = value.parse::<u32>() {
        return number > 0;
    }
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "UNUSED", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU",
        "XFSZ",
    ];
    let upper = value.to_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if NAMES.contains(&name) {
        return true;
    }
    // Real-time signals: RTMIN, RTMIN+n, RTMAX-n.
    name == "RTMIN"
        || name == "RTMAX"
        || name
            .strip_prefix("RTMIN+")
            .or_else(|| name.strip_prefix("RTMAX-"))
            .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n <= 15))
}

/// Go's `fmt.Sprintf("%q", []string)`: `["a" "b c"]`.
pub fn go_quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|item| crate::parser::go_quote(item))
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `fmt.Sprintf("%v", []string)`: `[a b c]`.
pub fn go_plain_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// Go's `time.Duration.String()`: `0s`, `1.5s`, `1m30s`, `2h0m0s`, `250ms`.
pub fn go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        // Sub-second: the largest unit that keeps a non-zero integer part.
        let (unit, scale) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", decimal(nanos, scale));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let seconds = decimal(nanos % 60_000_000_000, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// `value / scale` with the fraction's trailing zeros removed.
fn decimal(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let fraction = value % scale;
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = scale.to_string().len() - 1;
    let fraction = format!("{fraction:0digits$}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

/// RFC 3339 UTC time of a Unix timestamp (`1700000000` → `2023-11-14T22:13:20Z`).
pub fn rfc3339_utc(seconds: u64) -> String {
    let days = seconds / 86_400;
    let rest = seconds % 86_400;
    // Howard Hinnant's days-to-civil algorithm, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        (rest / 60) % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Platform {
        Platform {
            os: "linux".to_string(),
            architecture: "amd64".to_string(),
            variant: None,
        }
    }

    #[test]
    fn references_get_docker_defaults() {
        let cases = [
            ("alpine", "docker.io/library/alpine:latest"),
            ("alpine:3.20", "docker.io/library/alpine:3.20"),
            ("user/app", "docker.io/user/app:latest"),
            (
                "index.docker.io/library/busybox:1",
                "docker.io/library/busybox:1",
            ),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("localhost/app:v1", "localhost/app:v1"),
            ("ghcr.io/o/r/app:1.0", "ghcr.io/o/r/app:1.0"),
            (
                "alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "docker.io/library/alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_reference(input).unwrap(), expected, "{input}");
        }
        assert!(normalize_reference("Alpine").is_err());
        assert!(normalize_reference("alpine:").is_err());
        assert!(normalize_reference("alpine@sha256:xyz").is_err());
        assert!(normalize_reference("").is_err());
    }

    #[test]
    fn platforms_are_normalised() {
        let parse = |v: &str| format_platform(&parse_platform(v, &host()).unwrap());
        assert_eq!(parse("linux/amd64"), "linux/amd64");
        assert_eq!(parse("linux/x86_64"), "linux/amd64");
        assert_eq!(parse("linux/aarch64"), "linux/arm64");
        assert_eq!(parse("linux/arm"), "linux/arm/v7");
        assert_eq!(parse("Linux/ARM/v6"), "linux/arm/v6");
        assert_eq!(parse("arm64"), "linux/arm64");
        assert_eq!(parse("windows"), "windows/amd64");
        assert!(parse_platform("linux//amd64", &host()).is_err());
        assert!(parse_platform("a/b/c/d", &host()).is_err());
        assert!(parse_platform("linux/amd64!", &host()).is_err());
    }

    #[test]
    fn paths_resolve_against_the_workdir() {
        assert_eq!(normalize_workdir("/", "app"), "/app");
        assert_eq!(normalize_workdir("/app", "src/../lib"), "/app/lib");
        assert_eq!(normalize_workdir("/app", "/srv/"), "/srv");
        assert_eq!(dest_relative_to_workdir("/app", "."), "/app/");
        assert_eq!(dest_relative_to_workdir("/app", "bin/"), "/app/bin/");
        assert_eq!(dest_relative_to_workdir("/app", "x"), "/app/x");
        assert_eq!(dest_relative_to_workdir("/", "/etc/conf"), "/etc/conf");
        assert_eq!(dest_relative_to_workdir("/", "/"), "/");
    }

    #[test]
    fn chown_and_chmod_values() {
        assert_eq!(
            parse_chown("app:10").unwrap(),
            Chown {
                user: Some(UserSpec::Name("app".to_string())),
                group: Some(UserSpec::Id(10)),
            }
        );
        assert!(parse_chown(":10").is_err());
        assert_eq!(parse_chmod("755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(parse_chmod("0644").unwrap(), Chmod::Octal(0o644));
        assert_eq!(
            parse_chmod("u+x,go-w").unwrap(),
            Chmod::Symbolic("u+x,go-w".to_string())
        );
        assert!(parse_chmod("99999").is_err());
        assert!(parse_chmod("888").is_err());
        assert!(parse_chmod("rwx").is_err());
        assert!(parse_chmod("").is_err());
    }

    #[test]
    fn port_specs_expand() {
        assert_eq!(parse_port_spec("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(parse_port_spec("53/UDP").unwrap(), vec!["53/udp"]);
        assert_eq!(
            parse_port_spec("8000-8002/tcp").unwrap(),
            vec!["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert_eq!(
            parse_port_spec("127.0.0.1:8080:80").unwrap(),
            vec!["80/tcp"]
        );
        assert!(parse_port_spec("80/icmp").is_err());
        assert!(parse_port_spec("http").is_err());
        assert!(parse_port_spec("90-80").is_err());
    }

    #[test]
    fn unix_times_format_as_rfc3339() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn signals() {
        assert!(valid_signal("SIGTERM"));
        assert!(valid_signal("quit"));
        assert!(valid_signal("9"));
        assert!(valid_signal("SIGRTMIN+3"));
        assert!(!valid_signal("SIGFOO"));
        assert!(!valid_signal("0"));
    }

    #[test]
    fn go_formatting() {
        assert_eq!(
            go_quoted_list(&[
                "/bin/sh".to_string(),
                "-c".to_string(),
                "echo \"hi\"".to_string()
            ]),
            r#"["/bin/sh" "-c" "echo \"hi\""]"#
        );
        assert_eq!(
            go_plain_list(&["/a".to_string(), "/b".to_string()]),
            "[/a /b]"
        );
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_secs(30)), "30s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(7200)), "2h0m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
    }
}
