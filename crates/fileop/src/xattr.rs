//! Extended attributes copied from one open file to another (`security.capability`, ACLs, `user.*`).
//! Overlay's own `trusted.overlay.*` attributes are never copied: they describe the layer, not the file.
//! A destination filesystem without xattr support is not an error (BuildKit only logs it either).

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// Copies every extended attribute of `src` to `dst`.
pub(crate) fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> nix::Result<()> {
    for name in list(src)? {
        if name.starts_with(b"trusted.overlay.") {
            continue;
        }
        let Some(value) = get(src, &name)? else {
            continue;
        };
        let mut cname = name.clone();
        cname.push(0);
        // SAFETY: `cname` is NUL-terminated and `value` outlives the call.
        let res = unsafe {
            libc::fsetxattr(
                dst.as_raw_fd(),
                cname.as_ptr().cast(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        match Errno::result(res) {
            Ok(_) | Err(Errno::ENOTSUP) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sets attribute `name` of `fd` (from an archive's `SCHILY.xattr.*` PAX records); overlay's own
/// attributes are skipped, as is a filesystem without xattr support.
pub(crate) fn set_xattr(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> nix::Result<()> {
    if name.starts_with(b"trusted.overlay.") || name.is_empty() || name.contains(&0) {
        return Ok(());
    }
    let mut cname = name.to_vec();
    cname.push(0);
    // SAFETY: `cname` is NUL-terminated and `value` outlives the call.
    let res = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            cname.as_ptr().cast(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    match Errno::result(res) {
        Ok(_) | Err(Errno::ENOTSUP) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The attribute names of `fd`.
fn list(fd: BorrowedFd<'_>) -> nix::Result<Vec<Vec<u8>>> {
    loop {
        // SAFETY: a null buffer with size 0 asks for the needed size.
        let size = unsafe { libc::flistxattr(fd.as_raw_fd(), std::ptr::null_mut(), 0) };
        let size = match Errno::result(size) {
            Ok(size) => size as usize,
            Err(Errno::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` has `size` writable bytes.
        let got = unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match Errno::result(got) {
            Ok(got) => {
                buf.truncate(got as usize);
                return Ok(buf
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            // The list grew between the two calls: ask again.
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The value of attribute `name` of `fd`; `None` if it vanished meanwhile.
fn get(fd: BorrowedFd<'_>, name: &[u8]) -> nix::Result<Option<Vec<u8>>> {
    let mut cname = name.to_vec();
    cname.push(0);
    loop {
        // SAFETY: NUL-terminated name; a null buffer asks for the size.
        let size = unsafe {
            libc::fgetxattr(
                fd.as_raw_fd(),
                cname.as_ptr().cast(),
                std::ptr::null_mut(),
                0,
            )
        };
        let size = match Errno::result(size) {
            Ok(size) => size as usize,
            Err(Errno::ENODATA) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` has `size` writable bytes.
        let got = unsafe {
            libc::fgetxattr(
                fd.as_raw_fd(),
                cname.as_ptr().cast(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        match Errno::result(got) {
            Ok(got) => {
                buf.truncate(got as usize);
                return Ok(Some(buf));
            }
            Err(Errno::ERANGE) => continue,
            Err(Errno::ENODATA) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}
