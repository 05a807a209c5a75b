//! Which platforms this machine can run programs for, and the check that every RUN step of a
//! build is for one of them.
//!
//! A RUN step for another architecture would otherwise fail inside the sandbox with the kernel's
//! bare "exec format error". The host runs its own architecture (and 32-bit x86 on x86-64, as
//! BuildKit assumes); any other needs a `binfmt_misc` handler (QEMU user emulation), which
//! `/proc/sys/fs/binfmt_misc` lists. A handler is matched to an architecture by the ELF header
//! its magic bytes describe (class, byte order and `e_machine`), so any naming of the entries
//! works.
//!
//! A step's platform is its stage's: the check walks each stage's root filesystem chain (the
//! rootfs mount of an exec, the base of a file op) and reports the first RUN of a stage whose
//! platform cannot run here and whose result the cache does not hold. Steps that only copy files
//! never need to execute anything.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use kiln_frontend::lower::Lowered;
use kiln_llb::{Definition, OpKind, OpRef, Platform};
use kiln_solver::Solver;

/// Where the kernel lists its `binfmt_misc` handlers.
pub const BINFMT_MISC_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// A RUN step this machine cannot execute.
#[derive(Debug, thiserror::Error)]
#[error("{step} is for platform {platform}, which this machine ({host}) cannot execute: {reason}")]
pub struct UnrunnableStep {
    /// The step as the build shows it, with its Dockerfile location when known.
    pub step: String,
    /// The op's description (`[2/3] RUN make`), as cache plans name steps.
    pub description: Option<String>,
    pub platform: Platform,
    pub host: Platform,
    /// What is missing, and what to do about it.
    pub reason: String,
}

/// The architectures (Go/OCI names) this machine can run: its own, those it runs natively
/// besides, and those with an enabled `binfmt_misc` handler under `binfmt_dir`.
pub fn runnable_architectures(host: &Platform, binfmt_dir: &Path) -> HashSet<String> {
    let mut runnable = HashSet::from([host.architecture.clone()]);
    if host.architecture == "amd64" {
        runnable.insert("386".to_string());
    }
    runnable.extend(emulated_architectures(binfmt_dir));
    runnable
}

/// The architectures with an enabled handler in `binfmt_dir` (none when it is not mounted or
/// emulation is disabled as a whole).
pub fn emulated_architectures(binfmt_dir: &Path) -> Vec<String> {
    let enabled = |text: &str| text.lines().next().map(str::trim) == Some("enabled");
    match fs::read_to_string(binfmt_dir.join("status")) {
        Ok(status) if enabled(&status) => {}
        _ => return Vec::new(),
    }
    let Ok(entries) = fs::read_dir(binfmt_dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == "status" || name == "register" {
            continue;
        }
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        if enabled(&text) {
            if let Some(architecture) = handler_architecture(&text) {
                found.push(architecture);
            }
        }
    }
    found
}

/// The architecture a handler entry's magic describes, if it matches ELF executables.
fn handler_architecture(entry: &str) -> Option<String> {
    let mut offset = 0usize;
    let mut magic = None;
    for line in entry.lines() {
        if let Some(value) = line.strip_prefix("offset ") {
            offset = value.trim().parse().ok()?;
        } else if let Some(value) = line.strip_prefix("magic ") {
            magic = decode_hex(value.trim());
        }
    }
    // The ELF header bytes the magic fixes, from the start of the file.
    let magic = magic?;
    let mut header = vec![0u8; offset];
    header.extend(magic);
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return None;
    }
    let (class64, little) = (header[4] == 2, header[5] == 1);
    let machine = if little {
        u16::from_le_bytes([header[18], header[19]])
    } else {
        u16::from_be_bytes([header[18], header[19]])
    };
    let architecture = match (machine, class64, little) {
        (0x03, false, _) => "386",
        (0x3e, true, _) => "amd64",
        (0x28, false, _) => "arm",
        (0xb7, true, _) => "arm64",
        (0x15, true, true) => "ppc64le",
        (0x15, true, false) => "ppc64",
        (0x16, true, false) => "s390x",
        (0xf3, true, _) => "riscv64",
        (0x08, true, true) => "mips64le",
        (0x08, true, false) => "mips64",
        (0x08, false, true) => "mipsle",
        (0x08, false, false) => "mips",
        (0x102, true, _) => "loong64",
        _ => return None,
    };
    Some(architecture.to_string())
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// Every RUN step (in Dockerfile order per stage) of a lowered stage whose platform this machine
/// cannot execute.
pub fn unrunnable_steps(
    lowered: &Lowered,
    host: &Platform,
    runnable: &HashSet<String>,
    binfmt_dir: &Path,
) -> Vec<UnrunnableStep> {
    let mut found = Vec::new();
    for stage in &lowered.stages {
        let platform = &stage.platform;
        let reason = if !platform.os.eq_ignore_ascii_case(&host.os) {
            format!(
                "{} programs do not run on {} (build for {host})",
                platform.os, host.os
            )
        } else if !runnable.contains(&platform.architecture) {
            format!(
                "no binfmt_misc handler for {} is registered in {} (register QEMU user emulation, e.g. the qemu-user-binfmt package, or build for {host})",
                platform.architecture,
                binfmt_dir.display()
            )
        } else {
            continue;
        };
        for at in execs_in_chain(&lowered.definition, &stage.root) {
            let metadata = lowered.definition.metadata(&at.digest);
            let description = metadata.and_then(|m| m.description.clone());
            let shown = description
                .clone()
                .unwrap_or_else(|| format!("RUN {}", at.digest.short()));
            let step = match metadata.and_then(|m| m.location.as_ref()) {
                Some(location) => {
                    format!("step {shown} ({}:{})", location.file, location.start_line)
                }
                None => format!("step {shown}"),
            };
            found.push(UnrunnableStep {
                step,
                description,
                platform: platform.clone(),
                host: host.clone(),
                reason: reason.clone(),
            });
        }
    }
    found
}

/// Why a build cannot run its RUN steps here.
#[derive(Debug, thiserror::Error)]
pub enum PlatformCheckError {
    #[error(transparent)]
    Unrunnable(Box<UnrunnableStep>),
    #[error("looking up which steps are cached")]
    Explain(#[source] kiln_solver::SolveError),
}

/// Fails on the first RUN step this machine cannot execute whose result the cache does not have
/// (a cached step never runs, so a rebuild of an emulated build works without emulation).
///
/// # Errors
/// [`PlatformCheckError::Unrunnable`] naming the step, its platform and what is missing.
pub fn ensure_runnable(
    solver: &Solver<'_>,
    lowered: &Lowered,
    host: &Platform,
    binfmt_dir: &Path,
) -> Result<(), PlatformCheckError> {
    let runnable = runnable_architectures(host, binfmt_dir);
    let unrunnable = unrunnable_steps(lowered, host, &runnable, binfmt_dir);
    if unrunnable.is_empty() {
        return Ok(());
    }
    let plan = solver
        .explain(&lowered.definition, &lowered.target.root)
        .map_err(PlatformCheckError::Explain)?;
    let cached: HashSet<&str> = plan
        .iter()
        .filter(|step| step.cached)
        .map(|step| step.description.as_str())
        .collect();
    match unrunnable.into_iter().find(|step| {
        !step
            .description
            .as_deref()
            .is_some_and(|description| cached.contains(description))
    }) {
        Some(step) => Err(PlatformCheckError::Unrunnable(Box::new(step))),
        None => Ok(()),
    }
}

/// Where the kernel's `binfmt_misc` handlers are listed: `KILN_BINFMT_MISC_DIR` (for hosts that
/// mount it elsewhere) or [`BINFMT_MISC_DIR`].
pub fn binfmt_misc_dir() -> PathBuf {
    std::env::var_os("KILN_BINFMT_MISC_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(BINFMT_MISC_DIR), PathBuf::from)
}

/// The exec ops on the root filesystem chain ending at `root`, earliest first.
fn execs_in_chain(definition: &Definition, root: &OpRef) -> Vec<OpRef> {
    let mut execs = Vec::new();
    let mut current = Some(root.clone());
    let mut seen = HashSet::new();
    while let Some(at) = current.take() {
        if !seen.insert(at.digest.clone()) {
            break;
        }
        let Some(op) = definition.get(&at.digest) else {
            break;
        };
        let input = match &op.kind {
            OpKind::Exec(exec) => {
                execs.push(at.clone());
                exec.mounts
                    .iter()
                    .find(|mount| mount.target == "/")
                    .and_then(|mount| mount.input)
            }
            OpKind::File(file) => file.base,
            OpKind::Source(_) | OpKind::Merge(_) => None,
        };
        current = input.and_then(|index| op.inputs.get(index as usize).cloned());
    }
    execs.reverse();
    execs
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_AARCH64: &str = "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: OCF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";
    const QEMU_S390X: &str = "enabled\ninterpreter /usr/bin/qemu-s390x\nflags: OCF\noffset 0\nmagic 7f454c4602020100000000000000000000020016\nmask ffffffffffffff00fffffffffffffffffffeffff\n";

    fn host() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    #[test]
    fn handlers_are_matched_by_their_elf_magic() {
        assert_eq!(handler_architecture(QEMU_AARCH64).as_deref(), Some("arm64"));
        assert_eq!(handler_architecture(QEMU_S390X).as_deref(), Some("s390x"));
        let jar = "enabled\ninterpreter /usr/bin/jexec\nflags: \noffset 0\nmagic 504b0304\n";
        assert_eq!(handler_architecture(jar), None);
    }

    #[test]
    fn only_enabled_handlers_count() {
        let dir = tempfile::tempdir().unwrap();
        assert!(emulated_architectures(dir.path()).is_empty(), "not mounted");
        fs::write(dir.path().join("status"), "enabled\n").unwrap();
        fs::write(dir.path().join("register"), "").unwrap();
        fs::write(dir.path().join("qemu-aarch64"), QEMU_AARCH64).unwrap();
        fs::write(
            dir.path().join("qemu-s390x"),
            QEMU_S390X.replacen("enabled", "disabled", 1),
        )
        .unwrap();
        assert_eq!(
            emulated_architectures(dir.path()),
            vec!["arm64".to_string()]
        );
        let runnable = runnable_architectures(&host(), dir.path());
        assert!(runnable.contains("amd64") && runnable.contains("386"));
        assert!(runnable.contains("arm64") && !runnable.contains("s390x"));
        fs::write(dir.path().join("status"), "disabled\n").unwrap();
        assert!(emulated_architectures(dir.path()).is_empty());
    }

    fn first_unrunnable(
        lowered: &Lowered,
        host: &Platform,
        runnable: &HashSet<String>,
        binfmt_dir: &Path,
    ) -> Option<UnrunnableStep> {
        unrunnable_steps(lowered, host, runnable, binfmt_dir)
            .into_iter()
            .next()
    }

    fn lower_for(dockerfile: &str, platform: &str) -> Lowered {
        let parsed = kiln_frontend::parser::parse_dockerfile(dockerfile, "Dockerfile").unwrap();
        let mut options = kiln_frontend::lower::LowerOptions::new(host());
        options.target_platform =
            Some(kiln_frontend::lower::parse_platform(platform, &host()).unwrap());
        kiln_frontend::lower::lower(&parsed, &options, &kiln_frontend::lower::OfflineResolver)
            .unwrap()
    }

    #[test]
    fn the_first_foreign_run_is_reported() {
        let runnable = runnable_architectures(&host(), Path::new("/nonexistent"));
        let dockerfile = "FROM scratch\nCOPY a /a\nRUN first\nRUN second\n";
        let error = first_unrunnable(
            &lower_for(dockerfile, "linux/s390x"),
            &host(),
            &runnable,
            Path::new(BINFMT_MISC_DIR),
        )
        .expect("an unrunnable step");
        let message = error.to_string();
        assert!(message.contains("linux/s390x"), "{message}");
        assert!(message.contains("RUN first"), "{message}");
        assert!(message.contains("Dockerfile:3"), "{message}");
        assert!(
            first_unrunnable(
                &lower_for(dockerfile, "linux/amd64"),
                &host(),
                &runnable,
                Path::new(BINFMT_MISC_DIR),
            )
            .is_none()
        );
        assert!(
            first_unrunnable(
                &lower_for("FROM scratch\nCOPY a /a\n", "linux/s390x"),
                &host(),
                &runnable,
                Path::new(BINFMT_MISC_DIR),
            )
            .is_none()
        );
    }

    #[test]
    fn every_foreign_run_is_listed_in_dockerfile_order() {
        let runnable = runnable_architectures(&host(), Path::new("/nonexistent"));
        let lowered = lower_for(
            "FROM scratch\nRUN one\nCOPY a /a\nRUN two\n",
            "linux/riscv64",
        );
        let steps = unrunnable_steps(&lowered, &host(), &runnable, Path::new(BINFMT_MISC_DIR));
        let descriptions: Vec<&str> = steps
            .iter()
            .filter_map(|step| step.description.as_deref())
            .collect();
        assert_eq!(descriptions, ["[1/3] RUN one", "[3/3] RUN two"]);
    }

    #[test]
    fn another_os_is_reported_as_such() {
        let runnable = runnable_architectures(&host(), Path::new("/nonexistent"));
        let error = first_unrunnable(
            &lower_for("FROM scratch\nRUN dir\n", "windows/amd64"),
            &host(),
            &runnable,
            Path::new(BINFMT_MISC_DIR),
        )
        .expect("an unrunnable step");
        assert!(
            error
                .to_string()
                .contains("windows programs do not run on linux"),
            "{error}"
        );
    }

    #[test]
    fn a_build_stage_on_the_build_platform_may_run() {
        let runnable = runnable_architectures(&host(), Path::new("/nonexistent"));
        let dockerfile = "FROM --platform=$BUILDPLATFORM scratch AS build\nRUN make\nFROM scratch\nCOPY --from=build /out /out\n";
        assert!(
            first_unrunnable(
                &lower_for(dockerfile, "linux/arm64"),
                &host(),
                &runnable,
                Path::new(BINFMT_MISC_DIR),
            )
            .is_none()
        );
    }
}
