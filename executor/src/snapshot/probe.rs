//! Remembering that overlayfs works, so a build or `kiln run` does not mount a trial overlay every
//! time (a trial mount is a good share of a cached build's CPU).
//!
//! The answer is kept in a small file under the store root, valid only for the same kernel
//! release, the same filesystem under the store (device and filesystem type: the overlay's upper
//! and work dirs live there) and the same user namespace and effective user (privileges decide
//! whether mounting is allowed at all). Only a *positive* answer is kept: a host without overlay
//! keeps probing (there the probe fails early and is cheap), and one that loses overlay support
//! under the same kernel, filesystem and privileges is not a case kiln tries to outguess. The
//! file is written atomically (temp file, fsync, rename); an unreadable or stale one just means
//! probing again.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sys::statfs::statfs;

/// The file under the store root holding the remembered answer.
pub const OVERLAY_PROBE_FILE: &str = "overlay-probe.v1";

/// What the remembered answer depends on, as one line: kernel release, the store's device and
/// filesystem type, the user namespace and the effective uid.
fn host_fingerprint(cache_dir: &Path) -> Option<String> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let device = fs::metadata(cache_dir).ok()?.dev();
    let fs_type = statfs(cache_dir).ok()?.filesystem_type().0;
    let user_ns = fs::metadata("/proc/self/ns/user").ok()?.ino();
    let euid = nix::unistd::geteuid().as_raw();
    Some(format!(
        "kernel={} dev={device} fs={fs_type:#x} userns={user_ns} euid={euid}",
        release.trim()
    ))
}

/// Whether overlayfs works for the store at `cache_dir`: the remembered answer when it was recorded
/// for this host (see the module doc), else `probe()`, whose positive answer is then remembered.
pub fn overlay_supported_cached(cache_dir: &Path, probe: impl FnOnce() -> bool) -> bool {
    let Some(fingerprint) = host_fingerprint(cache_dir) else {
        return probe();
    };
    let file = cache_dir.join(OVERLAY_PROBE_FILE);
    if fs::read_to_string(&file).is_ok_and(|recorded| recorded.trim_end() == fingerprint) {
        return true;
    }
    let supported = probe();
    if supported && let Err(error) = write_atomically(cache_dir, &file, &fingerprint) {
        // Only costs a probe next time.
        tracing::debug!(path = %file.display(), %error, "could not remember the overlay probe");
    }
    supported
}

/// Writes `line` to `file` in `dir` via a temp file, fsync and rename, so a reader sees the old
/// file or the whole new one.
fn write_atomically(dir: &Path, file: &Path, line: &str) -> std::io::Result<()> {
    let temp = dir.join(format!(".{OVERLAY_PROBE_FILE}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut out = fs::File::create(&temp)?;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        out.sync_all()?;
        fs::rename(&temp, file)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_positive_answer_is_remembered_and_a_negative_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let probes = Cell::new(0);
        let probe = |answer: bool| {
            let probes = &probes;
            move || {
                probes.set(probes.get() + 1);
                answer
            }
        };
        assert!(!overlay_supported_cached(dir.path(), probe(false)));
        assert!(!overlay_supported_cached(dir.path(), probe(false)));
        assert_eq!(probes.get(), 2, "a negative answer is probed again");
        assert!(!dir.path().join(OVERLAY_PROBE_FILE).exists());

        assert!(overlay_supported_cached(dir.path(), probe(true)));
        assert!(overlay_supported_cached(dir.path(), probe(false)));
        assert_eq!(probes.get(), 3, "the positive answer was remembered");
    }

    #[test]
    fn an_answer_recorded_for_another_host_is_probed_again() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(OVERLAY_PROBE_FILE),
            "kernel=0.0.1 dev=1 fs=0x1 userns=1 euid=0\n",
        )
        .unwrap();
        let probed = Cell::new(false);
        let answer = overlay_supported_cached(dir.path(), || {
            probed.set(true);
            false
        });
        assert!(!answer && probed.get());
        // No temp files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(OVERLAY_PROBE_FILE)]);
    }
}
