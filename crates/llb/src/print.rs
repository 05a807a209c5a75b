//! A readable text form of a `Definition` for `kiln debug llb`: one block per op, headed by its
//! short digest and kind, with inputs named by short digest.

use std::fmt::{self, Write as _};

use crate::definition::Definition;
use crate::op::{
    Chmod, Chown, FileAction, MountKind, NetworkMode, Op, OpKind, SecurityMode, SourceOp, UserSpec,
};

impl fmt::Display for Definition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (digest, op, metadata) in self.iter() {
            write!(f, "{} {}", digest.short(), op.kind_name())?;
            write_op(f, op)?;
            if let Some(metadata) = metadata {
                if let Some(description) = &metadata.description {
                    write!(f, "\n    # {description}")?;
                }
                if let Some(location) = &metadata.location {
                    write!(
                        f,
                        "\n    # at {}:{}",
                        location.file,
                        line_range(location.start_line, location.end_line)
                    )?;
                }
                if metadata.ignore_cache {
                    write!(f, "\n    # ignore cache")?;
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

fn line_range(start: usize, end: usize) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    }
}

/// The short name of input `index` of `op` (`<12 hex>` or `<12 hex>:<output>`).
fn input_name(op: &Op, index: u32) -> String {
    match op.inputs.get(index as usize) {
        Some(input) if input.output == 0 => input.digest.short().to_string(),
        Some(input) => format!("{}:{}", input.digest.short(), input.output),
        None => format!("<missing input #{index}>"),
    }
}

fn write_op(f: &mut fmt::Formatter<'_>, op: &Op) -> fmt::Result {
    match &op.kind {
        OpKind::Source(source) => write_source(f, source),
        OpKind::Exec(exec) => {
            write!(f, " {}", quoted_list(&exec.args))?;
            if !exec.cwd.is_empty() {
                write!(f, " cwd={}", exec.cwd)?;
            }
            if !exec.user.is_empty() {
                write!(f, " user={}", exec.user)?;
            }
            match exec.network {
                NetworkMode::Sandbox => {}
                NetworkMode::Host => write!(f, " network=host")?,
                NetworkMode::None => write!(f, " network=none")?,
            }
            if exec.security == SecurityMode::Insecure {
                write!(f, " security=insecure")?;
            }
            if !exec.env.is_empty() {
                write!(f, "\n    env {}", quoted_list(&exec.env))?;
            }
            for secret in &exec.secret_env {
                write!(
                    f,
                    "\n    secret env {} id={}{}",
                    secret.name,
                    secret.id,
                    if secret.required { " required" } else { "" }
                )?;
            }
            for mount in &exec.mounts {
                write!(f, "\n    mount {}", mount.target)?;
                match &mount.kind {
                    MountKind::Bind => {}
                    MountKind::Cache {
                        id,
                        sharing,
                        uid,
                        gid,
                        mode,
                    } => write!(
                        f,
                        " cache id={id} sharing={} uid={uid} gid={gid} mode={mode:o}",
                        format!("{sharing:?}").to_lowercase()
                    )?,
                    MountKind::Tmpfs { size } => {
                        write!(f, " tmpfs")?;
                        if let Some(size) = size {
                            write!(f, " size={size}")?;
                        }
                    }
                    MountKind::Secret {
                        id,
                        required,
                        uid,
                        gid,
                        mode,
                    } => write!(
                        f,
                        " secret id={id} uid={uid} gid={gid} mode={mode:o}{}",
                        if *required { " required" } else { "" }
                    )?,
                    MountKind::Ssh {
                        id,
                        required,
                        uid,
                        gid,
                        mode,
                    } => write!(
                        f,
                        " ssh id={id} uid={uid} gid={gid} mode={mode:o}{}",
                        if *required { " required" } else { "" }
                    )?,
                }
                if let Some(input) = mount.input {
                    write!(f, " <- {}", input_name(op, input))?;
                }
                if let Some(selector) = &mount.selector {
                    write!(f, " path={selector}")?;
                }
                if mount.readonly {
                    write!(f, " ro")?;
                }
                if let Some(output) = mount.output {
                    write!(f, " => output {output}")?;
                }
            }
            Ok(())
        }
        OpKind::File(file) => {
            match file.base {
                Some(base) => write!(f, " on {}", input_name(op, base))?,
                None => write!(f, " on scratch")?,
            }
            for action in &file.actions {
                write!(f, "\n    ")?;
                match action {
                    FileAction::Copy(copy) => {
                        write!(
                            f,
                            "copy {}:{:?} -> {:?}",
                            input_name(op, copy.src),
                            copy.src_path,
                            copy.dest
                        )?;
                        write_owner(f, copy.chown.as_ref())?;
                        match &copy.chmod {
                            Some(Chmod::Octal(mode)) => write!(f, " chmod={mode:o}")?,
                            Some(Chmod::Symbolic(mode)) => write!(f, " chmod={mode}")?,
                            None => {}
                        }
                        let flags = [
                            (copy.attempt_unpack, "unpack"),
                            (copy.parents, "parents"),
                            (!copy.follow_symlinks, "no-follow"),
                            (!copy.allow_wildcard, "no-wildcard"),
                            (copy.allow_empty_wildcard, "allow-empty"),
                            (!copy.dir_copy_contents, "copy-dir-itself"),
                            (!copy.create_dest_path, "no-create-dest"),
                        ];
                        for (set, name) in flags {
                            if set {
                                write!(f, " {name}")?;
                            }
                        }
                        if !copy.include_patterns.is_empty() {
                            write!(f, " include={}", quoted_list(&copy.include_patterns))?;
                        }
                        if !copy.exclude_patterns.is_empty() {
                            write!(f, " exclude={}", quoted_list(&copy.exclude_patterns))?;
                        }
                    }
                    FileAction::Mkdir(mkdir) => {
                        write!(f, "mkdir {:?} mode={:o}", mkdir.path, mkdir.mode)?;
                        if mkdir.make_parents {
                            write!(f, " parents")?;
                        }
                        write_owner(f, mkdir.owner.as_ref())?;
                    }
                    FileAction::Mkfile(mkfile) => {
                        write!(
                            f,
                            "mkfile {:?} mode={:o} ({} bytes)",
                            mkfile.path,
                            mkfile.mode,
                            mkfile.data.len()
                        )?;
                        write_owner(f, mkfile.owner.as_ref())?;
                    }
                    FileAction::Rm(rm) => {
                        write!(f, "rm {:?}", rm.path)?;
                        if rm.allow_not_found {
                            write!(f, " allow-not-found")?;
                        }
                        if rm.allow_wildcard {
                            write!(f, " wildcard")?;
                        }
                    }
                }
            }
            Ok(())
        }
        OpKind::Merge(_) => {
            let names: Vec<String> = (0..op.inputs.len() as u32)
                .map(|index| input_name(op, index))
                .collect();
            write!(f, " {}", names.join(" + "))
        }
    }
}

fn write_source(f: &mut fmt::Formatter<'_>, source: &SourceOp) -> fmt::Result {
    match source {
        SourceOp::Scratch => write!(f, " scratch"),
        SourceOp::Image {
            reference,
            platform,
        } => {
            write!(f, " image {reference}")?;
            if let Some(platform) = platform {
                write!(f, " platform={platform}")?;
            }
            Ok(())
        }
        SourceOp::Local {
            name,
            include_patterns,
            exclude_patterns,
            follow_paths,
        } => {
            write!(f, " local {name}")?;
            if !include_patterns.is_empty() {
                write!(f, " include={}", quoted_list(include_patterns))?;
            }
            if !exclude_patterns.is_empty() {
                write!(f, " exclude={}", quoted_list(exclude_patterns))?;
            }
            if !follow_paths.is_empty() {
                write!(f, " follow={}", quoted_list(follow_paths))?;
            }
            Ok(())
        }
        SourceOp::Http {
            url,
            checksum,
            filename,
        } => {
            write!(f, " http {url}")?;
            if let Some(checksum) = checksum {
                write!(f, " checksum={checksum}")?;
            }
            if let Some(filename) = filename {
                write!(f, " filename={filename}")?;
            }
            Ok(())
        }
        SourceOp::Git {
            url,
            reference,
            subdir,
            keep_git_dir,
        } => {
            write!(f, " git {url}")?;
            if let Some(reference) = reference {
                write!(f, " ref={reference}")?;
            }
            if let Some(subdir) = subdir {
                write!(f, " subdir={subdir}")?;
            }
            if *keep_git_dir {
                write!(f, " keep-git-dir")?;
            }
            Ok(())
        }
    }
}

fn write_owner(f: &mut fmt::Formatter<'_>, owner: Option<&Chown>) -> fmt::Result {
    let Some(owner) = owner else {
        return Ok(());
    };
    let name = |spec: &Option<UserSpec>| match spec {
        Some(UserSpec::Id(id)) => id.to_string(),
        Some(UserSpec::Name(name)) => name.clone(),
        None => String::new(),
    };
    write!(f, " chown={}", name(&owner.user))?;
    if owner.group.is_some() {
        write!(f, ":{}", name(&owner.group))?;
    }
    Ok(())
}

/// `["a", "b c"]` with JSON string quoting.
fn quoted_list(items: &[String]) -> String {
    let mut out = String::from("[");
    for (position, item) in items.iter().enumerate() {
        if position > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{item:?}");
    }
    out.push(']');
    out
}
