//! Extended attributes through raw `l*xattr`/`f*xattr` calls: the few operations the diff and the
//! extractor need, never following a final symlink.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// (name, value) pairs of extended attributes.
pub(crate) type XattrList = Vec<(Vec<u8>, Vec<u8>)>;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn c_name(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "xattr name contains a NUL byte",
        )
    })
}

/// All xattrs of `path` (not following a final symlink), sorted by name.
///
/// # Errors
/// I/O errors of the listing or reading; a filesystem without xattr support gives an empty list.
pub(crate) fn list(path: &Path) -> io::Result<XattrList> {
    let cpath = c_path(path)?;
    let mut names = vec![0u8; 1024];
    let len = loop {
        // SAFETY: the buffer pointer and length describe a live, writable allocation.
        let n = unsafe { libc::llistxattr(cpath.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(err),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if let Some(value) = get(path, name)? {
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// The value of xattr `name` on `path` (not following a final symlink), `None` when absent.
///
/// # Errors
/// I/O errors other than "no such attribute" / "not supported".
pub(crate) fn get(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let cpath = c_path(path)?;
    let cname = c_name(name)?;
    let mut value = vec![0u8; 256];
    loop {
        // SAFETY: the buffer pointer and length describe a live, writable allocation.
        let n = unsafe {
            libc::lgetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if n >= 0 {
            value.truncate(n as usize);
            return Ok(Some(value));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) => value.resize(value.len() * 4, 0),
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// Sets xattr `name` on the entry `entry_name` of the directory `dir`, not following `entry_name` if it
/// is a symlink. Goes through `/proc/self/fd/<dir>/<entry>` so that only the final component is looked
/// up by name, inside a directory that was already resolved safely.
///
/// # Errors
/// I/O errors of `lsetxattr` (callers decide which ones to tolerate).
pub(crate) fn set_at(
    dir: BorrowedFd<'_>,
    entry_name: &[u8],
    name: &[u8],
    value: &[u8],
) -> io::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(entry_name);
    let cpath = c_path(Path::new(std::ffi::OsStr::from_bytes(&path)))?;
    let cname = c_name(name)?;
    // SAFETY: all pointers come from live CStrings / slices with their true lengths.
    let rc = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets xattr `name` on the open file `fd`.
///
/// # Errors
/// I/O errors of `fsetxattr`.
pub(crate) fn set_fd(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
    let cname = c_name(name)?;
    // SAFETY: pointers come from a live CString and slice with their true lengths.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
