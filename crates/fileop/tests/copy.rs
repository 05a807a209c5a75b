//! COPY semantics, one test per rule (run as root: ownership and devices need it).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::time::{Duration, SystemTime};

use common::*;
use kiln_fileop::{Chmod, Chown, CopyOptions, FileOpError, copy};

fn opts(sources: &[&str], dest: &str) -> CopyOptions {
    CopyOptions::new(strings(sources), dest)
}

#[test]
fn file_to_dest_with_trailing_slash_lands_inside_new_dir() {
    let r = roots();
    write(&r.src, "a.txt", "A");
    let report = copy(&r.src, &r.dst, &opts(&["a.txt"], "/app/")).unwrap();
    assert_eq!(read(&r.dst, "app/a.txt"), "A");
    assert_eq!(report.targets, vec!["/app/a.txt".to_string()]);
    assert_eq!(report.created_dirs, vec!["/app".to_string()]);
}

#[test]
fn file_to_missing_path_without_slash_becomes_that_file() {
    let r = roots();
    write(&r.src, "a.txt", "A");
    copy(&r.src, &r.dst, &opts(&["a.txt"], "/opt/renamed")).unwrap();
    assert_eq!(read(&r.dst, "opt/renamed"), "A");
}

#[test]
fn copy_dir_copies_contents() {
    let r = roots();
    write(&r.src, "dir/one", "1");
    write(&r.src, "dir/sub/two", "2");
    copy(&r.src, &r.dst, &opts(&["dir"], "/target")).unwrap();
    assert_eq!(read(&r.dst, "target/one"), "1");
    assert_eq!(read(&r.dst, "target/sub/two"), "2");
    assert!(!exists(&r.dst, "target/dir"));
}

#[test]
fn copy_dot_copies_whole_context() {
    let r = roots();
    write(&r.src, "x", "X");
    write(&r.src, "d/y", "Y");
    copy(&r.src, &r.dst, &opts(&["."], "/app")).unwrap();
    assert_eq!(read(&r.dst, "app/x"), "X");
    assert_eq!(read(&r.dst, "app/d/y"), "Y");
}

#[test]
fn dir_into_root_merges_without_touching_root_metadata() {
    let r = roots();
    write(&r.src, "etc/conf", "c");
    chmod(&r.src, 0o700);
    chmod(&r.dst, 0o755);
    copy(&r.src, &r.dst, &opts(&["."], "/")).unwrap();
    assert_eq!(read(&r.dst, "etc/conf"), "c");
    assert_eq!(mode(&r.dst, ""), 0o755);
}

#[test]
fn file_onto_existing_dir_puts_it_inside() {
    let r = roots();
    write(&r.src, "a.txt", "A");
    fs::create_dir(r.dst.join("existing")).unwrap();
    copy(&r.src, &r.dst, &opts(&["a.txt"], "/existing")).unwrap();
    assert_eq!(read(&r.dst, "existing/a.txt"), "A");
}

#[test]
fn copy_over_existing_file_replaces_it() {
    let r = roots();
    write(&r.src, "a.txt", "new");
    write(&r.dst, "a.txt", "old content that is longer");
    copy(&r.src, &r.dst, &opts(&["a.txt"], "/a.txt")).unwrap();
    assert_eq!(read(&r.dst, "a.txt"), "new");
}

#[test]
fn copy_over_existing_dir_merges() {
    let r = roots();
    write(&r.src, "d/new", "n");
    write(&r.src, "d/sub/shared", "from source");
    write(&r.dst, "app/old", "o");
    write(&r.dst, "app/sub/shared", "from image");
    write(&r.dst, "app/sub/keep", "k");
    copy(&r.src, &r.dst, &opts(&["d"], "/app")).unwrap();
    assert_eq!(read(&r.dst, "app/new"), "n");
    assert_eq!(read(&r.dst, "app/old"), "o");
    assert_eq!(read(&r.dst, "app/sub/shared"), "from source");
    assert_eq!(read(&r.dst, "app/sub/keep"), "k");
}

#[test]
fn existing_nested_dir_takes_source_metadata_but_top_does_not() {
    let r = roots();
    write(&r.src, "d/sub/f", "f");
    chmod(&r.src.join("d"), 0o700);
    chmod(&r.src.join("d/sub"), 0o750);
    write(&r.dst, "app/sub/g", "g");
    chmod(&r.dst.join("app"), 0o711);
    chmod(&r.dst.join("app/sub"), 0o777);
    copy(&r.src, &r.dst, &opts(&["d"], "/app")).unwrap();
    assert_eq!(mode(&r.dst, "app"), 0o711);
    assert_eq!(mode(&r.dst, "app/sub"), 0o750);
}

#[test]
fn several_sources_need_dir_dest() {
    let r = roots();
    write(&r.src, "a", "A");
    write(&r.src, "b", "B");
    let err = copy(&r.src, &r.dst, &opts(&["a", "b"], "/file")).unwrap_err();
    assert!(
        matches!(err, FileOpError::SeveralSourcesNeedDirDest { count: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("must be a directory and end with a /"),
        "{err}"
    );
    copy(&r.src, &r.dst, &opts(&["a", "b"], "/dir/")).unwrap();
    assert_eq!(read(&r.dst, "dir/a"), "A");
    assert_eq!(read(&r.dst, "dir/b"), "B");
}

#[test]
fn wildcard_matching_several_needs_dir_dest() {
    let r = roots();
    write(&r.src, "f1.txt", "1");
    write(&r.src, "f2.txt", "2");
    let err = copy(&r.src, &r.dst, &opts(&["f*.txt"], "/out")).unwrap_err();
    assert!(
        matches!(err, FileOpError::SeveralSourcesNeedDirDest { .. }),
        "{err}"
    );
}

#[test]
fn several_sources_into_existing_dir_without_slash_are_accepted() {
    let r = roots();
    write(&r.src, "a", "A");
    write(&r.src, "b", "B");
    fs::create_dir(r.dst.join("bin")).unwrap();
    copy(&r.src, &r.dst, &opts(&["a", "b"], "/bin")).unwrap();
    assert_eq!(read(&r.dst, "bin/b"), "B");
}

#[test]
fn wildcard_copies_matches_in_order_and_not_non_matches() {
    let r = roots();
    write(&r.src, "src/a.go", "a");
    write(&r.src, "src/b.go", "b");
    write(&r.src, "src/c.rs", "c");
    write(&r.src, "src/deep/d.go", "d");
    let report = copy(&r.src, &r.dst, &opts(&["src/*.go"], "/out/")).unwrap();
    assert_eq!(
        report.targets,
        vec!["/out/a.go".to_string(), "/out/b.go".to_string()]
    );
    assert!(!exists(&r.dst, "out/c.rs"));
    assert!(!exists(&r.dst, "out/d.go"));
}

#[test]
fn wildcard_matching_a_dir_copies_its_contents() {
    let r = roots();
    write(&r.src, "pkg1/x", "x");
    copy(&r.src, &r.dst, &opts(&["pkg*"], "/out/")).unwrap();
    assert_eq!(read(&r.dst, "out/x"), "x");
}

#[test]
fn wildcard_matching_nothing_is_an_error_unless_allowed() {
    let r = roots();
    let err = copy(&r.src, &r.dst, &opts(&["*.none"], "/out/")).unwrap_err();
    assert!(matches!(err, FileOpError::NoWildcardMatch { .. }), "{err}");
    let mut o = opts(&["*.none"], "/out/");
    o.allow_empty_wildcard = true;
    let report = copy(&r.src, &r.dst, &o).unwrap();
    assert!(report.targets.is_empty());
}

#[test]
fn missing_source_error_names_path_and_context() {
    let r = roots();
    let err = copy(&r.src, &r.dst, &opts(&["foo"], "/x")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "COPY failed: source \"foo\" not found in build context"
    );
}

#[test]
fn dotdot_source_stays_in_context() {
    let r = roots();
    write(&r.outside, "secret", "host secret");
    write(&r.src, "secret", "context file");
    copy(&r.src, &r.dst, &opts(&["../secret"], "/got")).unwrap();
    assert_eq!(read(&r.dst, "got"), "context file");
    let err = copy(&r.src, &r.dst, &opts(&["../outside/secret"], "/got2")).unwrap_err();
    assert!(matches!(err, FileOpError::SourceNotFound { .. }), "{err}");
}

#[test]
fn source_symlink_escaping_context_stays_in_context() {
    let r = roots();
    write(&r.outside, "secret", "host secret");
    symlink(r.outside.join("secret"), r.src.join("abs_link")).unwrap();
    symlink("../outside/secret", r.src.join("rel_link")).unwrap();
    // Both links resolve inside the context, where there is nothing: not found, never the host file.
    for link in ["abs_link", "rel_link"] {
        let err = copy(&r.src, &r.dst, &opts(&[link], "/got")).unwrap_err();
        assert!(
            matches!(err, FileOpError::SourceNotFound { .. }),
            "{link}: {err}"
        );
    }
    assert!(!exists(&r.dst, "got"));
}

#[test]
fn source_symlink_given_directly_is_followed() {
    let r = roots();
    write(&r.src, "real/file", "content");
    symlink("real/file", r.src.join("link")).unwrap();
    symlink("/real", r.src.join("dirlink")).unwrap();
    copy(&r.src, &r.dst, &opts(&["link"], "/copied")).unwrap();
    assert!(
        fs::symlink_metadata(r.dst.join("copied"))
            .unwrap()
            .is_file()
    );
    assert_eq!(read(&r.dst, "copied"), "content");
    copy(&r.src, &r.dst, &opts(&["dirlink"], "/d")).unwrap();
    assert_eq!(read(&r.dst, "d/file"), "content");
}

#[test]
fn source_symlink_not_followed_when_disabled() {
    let r = roots();
    write(&r.src, "target", "t");
    symlink("target", r.src.join("link")).unwrap();
    let mut o = opts(&["link"], "/link");
    o.follow_symlinks = false;
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(
        fs::read_link(r.dst.join("link")).unwrap().to_str(),
        Some("target")
    );
}

#[test]
fn symlinks_inside_copied_dir_stay_symlinks() {
    let r = roots();
    write(&r.src, "d/target", "t");
    symlink("target", r.src.join("d/rel")).unwrap();
    symlink("/etc/passwd", r.src.join("d/abs")).unwrap();
    symlink("missing", r.src.join("d/dangling")).unwrap();
    copy(&r.src, &r.dst, &opts(&["d"], "/out")).unwrap();
    assert_eq!(
        fs::read_link(r.dst.join("out/rel")).unwrap().to_str(),
        Some("target")
    );
    assert_eq!(
        fs::read_link(r.dst.join("out/abs")).unwrap().to_str(),
        Some("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(r.dst.join("out/dangling")).unwrap().to_str(),
        Some("missing")
    );
}

#[test]
fn hardlinks_preserved() {
    let r = roots();
    write(&r.src, "d/a", "shared");
    fs::create_dir(r.src.join("d/sub")).unwrap();
    fs::hard_link(r.src.join("d/a"), r.src.join("d/sub/b")).unwrap();
    let report = copy(&r.src, &r.dst, &opts(&["d"], "/out")).unwrap();
    let a = fs::metadata(r.dst.join("out/a")).unwrap();
    let b = fs::metadata(r.dst.join("out/sub/b")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    assert_eq!(report.hardlinks, 1);
    assert_eq!(report.files, 1);
}

#[test]
fn empty_dirs_copied() {
    let r = roots();
    fs::create_dir_all(r.src.join("d/empty/deeper")).unwrap();
    copy(&r.src, &r.dst, &opts(&["d"], "/out")).unwrap();
    assert!(is_dir(&r.dst, "out/empty/deeper"));
}

#[test]
fn long_and_unicode_names_copied() {
    let r = roots();
    let long = "n".repeat(255);
    let deep: String = (0..20)
        .map(|i| format!("level{i:02}-{}", "x".repeat(40)))
        .collect::<Vec<_>>()
        .join("/");
    write(&r.src, &format!("d/{long}"), "long");
    write(&r.src, "d/ünïcødé 文件 🚀.txt", "unicode");
    write(&r.src, &format!("d/{deep}/leaf"), "deep");
    copy(&r.src, &r.dst, &opts(&["d"], "/out")).unwrap();
    assert_eq!(read(&r.dst, &format!("out/{long}")), "long");
    assert_eq!(read(&r.dst, "out/ünïcødé 文件 🚀.txt"), "unicode");
    assert_eq!(read(&r.dst, &format!("out/{deep}/leaf")), "deep");
}

#[test]
fn modes_preserved_without_chmod() {
    let r = roots();
    let exe = write(&r.src, "d/run.sh", "#!/bin/sh");
    chmod(&exe, 0o4755);
    let private = write(&r.src, "d/private", "p");
    chmod(&private, 0o600);
    chmod(&r.src.join("d"), 0o750);
    copy(&r.src, &r.dst, &opts(&["d"], "/out/d")).unwrap();
    assert_eq!(mode(&r.dst, "out/d/run.sh"), 0o4755);
    assert_eq!(mode(&r.dst, "out/d/private"), 0o600);
    // The destination directory did not exist: it was created 0755 to receive the contents.
    assert_eq!(mode(&r.dst, "out/d"), 0o755);
}

#[test]
fn chmod_octal_applies_to_files_and_dirs() {
    let r = roots();
    write(&r.src, "d/f", "f");
    write(&r.src, "d/sub/g", "g");
    let mut o = opts(&["d"], "/out");
    o.chmod = Some(Chmod::parse("0751").unwrap());
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(mode(&r.dst, "out/f"), 0o751);
    assert_eq!(mode(&r.dst, "out/sub"), 0o751);
    assert_eq!(mode(&r.dst, "out/sub/g"), 0o751);
}

#[test]
fn chmod_symbolic_edits_each_entry() {
    let r = roots();
    chmod(&write(&r.src, "d/plain", "p"), 0o644);
    chmod(&write(&r.src, "d/exe", "e"), 0o744);
    let mut o = opts(&["d"], "/out");
    o.chmod = Some(Chmod::parse("go+rX,o-r").unwrap());
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(mode(&r.dst, "out/plain"), 0o640);
    assert_eq!(mode(&r.dst, "out/exe"), 0o755 & !0o004);
}

#[test]
fn ownership_from_context_becomes_root() {
    let r = roots();
    let f = write(&r.src, "d/f", "f");
    chown(&f, 1234, 5678);
    chown(&r.src.join("d"), 1234, 5678);
    fs::create_dir(r.src.join("d/sub")).unwrap();
    chown(&r.src.join("d/sub"), 42, 42);
    copy(&r.src, &r.dst, &opts(&["d"], "/out")).unwrap();
    assert_eq!(owner(&r.dst, "out/f"), (0, 0));
    assert_eq!(owner(&r.dst, "out/sub"), (0, 0));
}

#[test]
fn copy_from_keeps_source_ownership() {
    let r = roots();
    let f = write(&r.src, "app/bin", "b");
    chown(&f, 1000, 1001);
    symlink("bin", r.src.join("app/link")).unwrap();
    chown(&r.src.join("app/link"), 7, 8);
    let mut o = opts(&["/app"], "/app");
    o.preserve_owner = true;
    o.source_label = "stage builder".into();
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(owner(&r.dst, "app/bin"), (1000, 1001));
    assert_eq!(owner(&r.dst, "app/link"), (7, 8));
}

#[test]
fn chown_numeric_user_uses_uid_as_gid() {
    let r = roots();
    write(&r.src, "d/f", "f");
    let mut o = opts(&["d"], "/out/");
    o.chown = Some(Chown::Spec("1500".into()));
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(owner(&r.dst, "out/f"), (1500, 1500));
}

#[test]
fn chown_by_name_uses_dest_passwd() {
    let r = roots();
    write(&r.src, "f", "f");
    // The context has its own (different) account files; only the destination's count.
    write(&r.src, "etc/passwd", "app:x:1:1::/:/bin/sh\n");
    write(
        &r.dst,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1300::/home/app:/bin/sh\n",
    );
    write(&r.dst, "etc/group", "root:x:0:\nstaff:x:2345:\n");
    let mut o = opts(&["f"], "/f1");
    o.chown = Some(Chown::Spec("app".into()));
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(owner(&r.dst, "f1"), (1234, 1300));
    o.dest = "/f2".into();
    o.chown = Some(Chown::Spec("app:staff".into()));
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(owner(&r.dst, "f2"), (1234, 2345));
}

#[test]
fn chown_by_name_reads_passwd_through_image_symlinks_inside_root() {
    let r = roots();
    write(&r.src, "f", "f");
    write(&r.dst, "real/passwd", "app:x:4321:4321::/:/bin/sh\n");
    fs::create_dir(r.dst.join("etc")).unwrap();
    symlink("/real/passwd", r.dst.join("etc/passwd")).unwrap();
    let mut o = opts(&["f"], "/f");
    o.chown = Some(Chown::Spec("app".into()));
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(owner(&r.dst, "f"), (4321, 4321));
}

#[test]
fn chown_unknown_name_fails_naming_it() {
    let r = roots();
    write(&r.src, "f", "f");
    write(&r.dst, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
    let mut o = opts(&["f"], "/f");
    o.chown = Some(Chown::Spec("ghost".into()));
    let err = copy(&r.src, &r.dst, &o).unwrap_err();
    assert!(
        matches!(err, FileOpError::UnknownUser { ref name, .. } if name == "ghost"),
        "{err}"
    );
    assert!(!exists(&r.dst, "f"));
}

#[test]
fn chown_applies_to_created_dest_dirs() {
    let r = roots();
    write(&r.src, "f", "f");
    let mut o = opts(&["f"], "/a/b/");
    o.chown = Some(Chown::Ids { uid: 11, gid: 12 });
    let report = copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(
        report.created_dirs,
        vec!["/a".to_string(), "/a/b".to_string()]
    );
    assert_eq!(owner(&r.dst, "a"), (11, 12));
    assert_eq!(owner(&r.dst, "a/b"), (11, 12));
    assert_eq!(owner(&r.dst, "a/b/f"), (11, 12));
}

#[test]
fn created_dest_dirs_are_0755_root_owned() {
    let r = roots();
    write(&r.src, "f", "f");
    copy(&r.src, &r.dst, &opts(&["f"], "/x/y/z/f")).unwrap();
    for dir in ["x", "x/y", "x/y/z"] {
        assert_eq!(mode(&r.dst, dir), 0o755, "{dir}");
        assert_eq!(owner(&r.dst, dir), (0, 0), "{dir}");
    }
}

#[test]
fn dest_symlink_to_absolute_path_stays_in_root() {
    let r = roots();
    write(&r.src, "f", "payload");
    // In the image: /app -> /opt/app (absolute). On the host, /opt/app is elsewhere entirely;
    // use the outside dir's absolute path as the link target to prove it is not reached.
    fs::create_dir_all(r.dst.join("opt/app")).unwrap();
    symlink("/opt/app", r.dst.join("app")).unwrap();
    let outside_abs = r.outside.to_str().unwrap().to_string();
    symlink(&outside_abs, r.dst.join("evil")).unwrap();
    copy(&r.src, &r.dst, &opts(&["f"], "/app/")).unwrap();
    assert_eq!(read(&r.dst, "opt/app/f"), "payload");
    copy(&r.src, &r.dst, &opts(&["f"], "/evil/")).unwrap();
    assert_eq!(
        fs::read_dir(&r.outside).unwrap().count(),
        0,
        "wrote outside the root"
    );
    assert_eq!(
        read(
            &r.dst,
            &format!("{}/f", outside_abs.trim_start_matches('/'))
        ),
        "payload"
    );
}

#[test]
fn dest_symlink_with_dotdot_stays_in_root() {
    let r = roots();
    write(&r.src, "f", "payload");
    symlink("../../../../../../outside", r.dst.join("up")).unwrap();
    copy(&r.src, &r.dst, &opts(&["f"], "/up/f")).unwrap();
    assert_eq!(
        fs::read_dir(&r.outside).unwrap().count(),
        0,
        "wrote outside the root"
    );
    assert_eq!(read(&r.dst, "outside/f"), "payload");
}

#[test]
fn nested_dest_symlink_is_replaced_not_written_through() {
    let r = roots();
    write(&r.src, "d/conf", "new");
    let target = write(&r.outside, "victim", "untouched");
    fs::create_dir(r.dst.join("out")).unwrap();
    symlink(&target, r.dst.join("out/conf")).unwrap();
    copy(&r.src, &r.dst, &opts(&["d"], "/out")).unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), "untouched");
    assert!(
        fs::symlink_metadata(r.dst.join("out/conf"))
            .unwrap()
            .is_file()
    );
    assert_eq!(read(&r.dst, "out/conf"), "new");
}

#[test]
fn dir_merges_through_image_symlink_to_dir() {
    let r = roots();
    write(&r.src, "rootfs/lib/libx.so", "lib");
    write(&r.dst, "usr/lib/existing.so", "old");
    symlink("usr/lib", r.dst.join("lib")).unwrap();
    copy(&r.src, &r.dst, &opts(&["rootfs"], "/")).unwrap();
    assert_eq!(read(&r.dst, "usr/lib/libx.so"), "lib");
    assert_eq!(read(&r.dst, "usr/lib/existing.so"), "old");
    assert!(
        fs::symlink_metadata(r.dst.join("lib"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn nested_file_cannot_replace_directory() {
    let r = roots();
    write(&r.src, "d/thing", "file");
    write(&r.dst, "out/thing/inner", "x");
    let err = copy(&r.src, &r.dst, &opts(&["d"], "/out")).unwrap_err();
    assert!(
        matches!(err, FileOpError::ReplaceDirWithFile { ref path, .. } if path == "/out/thing"),
        "{err}"
    );
}

#[test]
fn xattrs_copied() {
    let r = roots();
    let f = write(&r.src, "f", "x");
    let path = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
    let value = b"hello";
    // SAFETY: valid NUL-terminated strings and buffer.
    let res = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.kiln".as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        res,
        0,
        "this test needs a filesystem with user xattrs: {}",
        std::io::Error::last_os_error()
    );
    copy(&r.src, &r.dst, &opts(&["f"], "/f")).unwrap();
    let out = std::ffi::CString::new(r.dst.join("f").to_str().unwrap()).unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: valid strings and buffer of the given size.
    let n = unsafe {
        libc::getxattr(
            out.as_ptr(),
            c"user.kiln".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 5);
    assert_eq!(&buf[..5], value);
}

#[test]
fn exclude_skips_matching() {
    let r = roots();
    write(&r.src, "d/keep.rs", "k");
    write(&r.src, "d/skip.txt", "s");
    write(&r.src, "d/node_modules/m/index.js", "m");
    write(&r.src, "d/sub/skip.txt", "s2");
    let mut o = opts(&["d"], "/out");
    o.excludes = strings(&["*.txt", "node_modules"]);
    copy(&r.src, &r.dst, &o).unwrap();
    assert!(exists(&r.dst, "out/keep.rs"));
    assert!(!exists(&r.dst, "out/skip.txt"));
    assert!(!exists(&r.dst, "out/node_modules"));
    // `*.txt` is anchored at the copied source's top, as in .dockerignore.
    assert!(exists(&r.dst, "out/sub/skip.txt"));
}

#[test]
fn exclude_applies_to_wildcard_matches_themselves() {
    let r = roots();
    write(&r.src, "home.md", "m");
    write(&r.src, "home.txt", "t");
    let mut o = opts(&["hom*"], "/mydir/");
    o.excludes = strings(&["*.txt"]);
    copy(&r.src, &r.dst, &o).unwrap();
    assert!(exists(&r.dst, "mydir/home.md"));
    assert!(!exists(&r.dst, "mydir/home.txt"));
}

#[test]
fn exclude_exception_reincludes_inside_excluded_dir() {
    let r = roots();
    write(&r.src, "d/logs/a.log", "a");
    write(&r.src, "d/logs/keep.log", "k");
    let mut o = opts(&["d"], "/out");
    o.excludes = strings(&["logs", "!logs/keep.log"]);
    copy(&r.src, &r.dst, &o).unwrap();
    assert!(exists(&r.dst, "out/logs/keep.log"));
    assert!(!exists(&r.dst, "out/logs/a.log"));
}

#[test]
fn context_excludes_are_relative_to_the_root_and_combine_with_exclude() {
    let r = roots();
    write(&r.src, "app/main.rs", "m");
    write(&r.src, "app/secret.env", "s");
    write(&r.src, "app/logs/a.log", "a");
    write(&r.src, "app/logs/keep.log", "k");
    write(&r.src, "app/notes.txt", "n");
    write(&r.src, "secret.env", "top");
    let mut o = opts(&["app"], "/out");
    // `secret.env` is anchored at the context root: `app/secret.env` stays.
    o.context_excludes = strings(&["secret.env", "app/logs", "!app/logs/keep.log"]);
    // `--exclude` is anchored at the copied source.
    o.excludes = strings(&["*.txt"]);
    copy(&r.src, &r.dst, &o).unwrap();
    assert!(exists(&r.dst, "out/main.rs"));
    assert!(exists(&r.dst, "out/secret.env"));
    assert!(exists(&r.dst, "out/logs/keep.log"));
    assert!(!exists(&r.dst, "out/logs/a.log"));
    assert!(!exists(&r.dst, "out/notes.txt"));
}

#[test]
fn a_context_ignored_source_is_not_found_and_wildcards_skip_it() {
    let r = roots();
    write(&r.src, "ignored.txt", "i");
    write(&r.src, "kept.txt", "k");
    let mut o = opts(&["ignored.txt"], "/out/");
    o.context_excludes = strings(&["ignored.txt"]);
    let err = copy(&r.src, &r.dst, &o).unwrap_err();
    assert!(matches!(err, FileOpError::SourceNotFound { .. }), "{err}");
    let mut o = opts(&["*.txt"], "/out/");
    o.context_excludes = strings(&["ignored.txt"]);
    copy(&r.src, &r.dst, &o).unwrap();
    assert!(exists(&r.dst, "out/kept.txt"));
    assert!(!exists(&r.dst, "out/ignored.txt"));
}

#[test]
fn parents_flag_keeps_relative_dirs() {
    let r = roots();
    write(&r.src, "x/y/a.txt", "a");
    write(&r.src, "x/y/b.md", "b");
    write(&r.src, "x/z/c.txt", "c");
    write(&r.src, "other/d.txt", "d");
    chmod(&r.src.join("x"), 0o750);
    let mut o = opts(&["x/*/*.txt"], "/dest/");
    o.parents = true;
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(read(&r.dst, "dest/x/y/a.txt"), "a");
    assert_eq!(read(&r.dst, "dest/x/z/c.txt"), "c");
    assert!(!exists(&r.dst, "dest/x/y/b.md"));
    assert!(!exists(&r.dst, "dest/other"));
    // Parent directories are recreated from the source's.
    assert_eq!(mode(&r.dst, "dest/x"), 0o750);
}

#[test]
fn parents_flag_with_pivot_keeps_path_after_it() {
    let r = roots();
    write(&r.src, "build/out/bin/app", "app");
    let mut o = opts(&["build/./out/bin/app"], "/opt/");
    o.parents = true;
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(read(&r.dst, "opt/out/bin/app"), "app");
    assert!(!exists(&r.dst, "opt/build"));
}

#[test]
fn relative_dest_uses_workdir() {
    let r = roots();
    write(&r.src, "a", "A");
    let mut o = opts(&["a"], "sub/");
    o.workdir = "/work/dir".into();
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(read(&r.dst, "work/dir/sub/a"), "A");
    let mut o = opts(&["a"], ".");
    o.workdir = "/w".into();
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(read(&r.dst, "w/a"), "A");
}

#[test]
fn mtime_override_applies_to_everything_written() {
    let r = roots();
    write(&r.src, "d/f", "f");
    symlink("f", r.src.join("d/l")).unwrap();
    let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let mut o = opts(&["d"], "/new/out/");
    o.mtime = Some(epoch);
    copy(&r.src, &r.dst, &o).unwrap();
    for rel in ["new", "new/out", "new/out/f", "new/out/l"] {
        assert_eq!(
            fs::symlink_metadata(r.dst.join(rel)).unwrap().mtime(),
            1_600_000_000,
            "{rel}"
        );
    }
}

#[test]
fn source_times_preserved_without_override() {
    let r = roots();
    let f = write(&r.src, "d/f", "f");
    let file = fs::File::options().write(true).open(&f).unwrap();
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    let dir = fs::File::open(r.src.join("d")).unwrap();
    dir.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000))
        .unwrap();
    let mut o = opts(&["d"], "/");
    o.dir_copy_contents = false;
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(fs::metadata(r.dst.join("d/f")).unwrap().mtime(), 1_000_000);
    // The directory's time is set after its contents were written.
    assert_eq!(fs::metadata(r.dst.join("d")).unwrap().mtime(), 2_000_000);
}

#[test]
fn dir_without_copy_contents_lands_inside_existing_dest() {
    let r = roots();
    write(&r.src, "d/f", "f");
    fs::create_dir(r.dst.join("out")).unwrap();
    let mut o = opts(&["d"], "/out");
    o.dir_copy_contents = false;
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(read(&r.dst, "out/d/f"), "f");
}

#[test]
fn create_dest_path_false_requires_parent() {
    let r = roots();
    write(&r.src, "a", "A");
    let mut o = opts(&["a"], "/missing/a");
    o.create_dest_path = false;
    let err = copy(&r.src, &r.dst, &o).unwrap_err();
    assert!(
        matches!(err, FileOpError::DestParentMissing { .. }),
        "{err}"
    );
}

#[test]
fn dest_path_through_a_file_is_not_a_directory() {
    let r = roots();
    write(&r.src, "a", "A");
    write(&r.dst, "file", "f");
    let err = copy(&r.src, &r.dst, &opts(&["a"], "/file/sub/")).unwrap_err();
    assert!(
        matches!(err, FileOpError::NotADirectory { ref path, .. } if path == "/file"),
        "{err}"
    );
}

#[test]
fn fifo_and_device_recreated() {
    let r = roots();
    fs::create_dir(r.src.join("d")).unwrap();
    nix::unistd::mkfifo(
        &r.src.join("d/pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &r.src.join("d/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        libc::makedev(1, 3),
    )
    .unwrap();
    let report = copy(&r.src, &r.dst, &opts(&["d"], "/out")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(
        fs::symlink_metadata(r.dst.join("out/pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let null = fs::symlink_metadata(r.dst.join("out/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(report.special_files, 2);
}

#[test]
fn non_utf8_names_and_hardlinks_between_them_copied() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let r = roots();
    let dir = r.src.join("d").join(OsStr::from_bytes(b"caf\xe9"));
    fs::create_dir_all(&dir).unwrap();
    let first = dir.join(OsStr::from_bytes(b"\xff\xfe.bin"));
    fs::write(&first, "bytes").unwrap();
    fs::hard_link(&first, dir.join(OsStr::from_bytes(b"second\x80"))).unwrap();
    copy(&r.src, &r.dst, &opts(&["d"], "/out")).unwrap();
    let out = r.dst.join("out").join(OsStr::from_bytes(b"caf\xe9"));
    let a = fs::metadata(out.join(OsStr::from_bytes(b"\xff\xfe.bin"))).unwrap();
    let b = fs::metadata(out.join(OsStr::from_bytes(b"second\x80"))).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(
        fs::read_to_string(out.join(OsStr::from_bytes(b"\xff\xfe.bin"))).unwrap(),
        "bytes"
    );
}

#[test]
fn wildcard_matching_non_utf8_names_copies_them() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let r = roots();
    fs::write(r.src.join(OsStr::from_bytes(b"data-\xff.bin")), "raw").unwrap();
    fs::write(r.src.join("data-ok.bin"), "ok").unwrap();
    let report = copy(&r.src, &r.dst, &opts(&["data-*.bin"], "/out/")).unwrap();
    assert_eq!(report.files, 2);
    assert_eq!(
        fs::read_to_string(r.dst.join("out").join(OsStr::from_bytes(b"data-\xff.bin"))).unwrap(),
        "raw"
    );
}

#[test]
fn file_onto_existing_top_level_symlink_writes_its_target_inside_root() {
    // BuildKit resolves the destination path (link included) inside the root before copying.
    let r = roots();
    write(&r.src, "conf", "new");
    write(&r.dst, "etc/real.conf", "old");
    symlink("/etc/real.conf", r.dst.join("link.conf")).unwrap();
    copy(&r.src, &r.dst, &opts(&["conf"], "/link.conf")).unwrap();
    assert_eq!(read(&r.dst, "etc/real.conf"), "new");
    assert!(
        fs::symlink_metadata(r.dst.join("link.conf"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn chown_group_only_keeps_root_user() {
    let r = roots();
    write(&r.src, "f", "f");
    write(&r.dst, "etc/group", "staff:x:50:\n");
    let mut o = opts(&["f"], "/f");
    o.chown = Some(Chown::Spec(":staff".into()));
    copy(&r.src, &r.dst, &o).unwrap();
    assert_eq!(owner(&r.dst, "f"), (0, 50));
}
