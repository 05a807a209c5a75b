//! File ops (COPY, ADD, WORKDIR, heredoc files, rm): a snapshot over the base chain is mounted (with
//! any other chain a COPY reads from), the actions are applied in-process with `kiln-fileop`, and the
//! snapshot's changes become the new layer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_executor::RootMount;
use kiln_fileop::{Chmod, Chown, CopyOptions};
use kiln_llb::{CopyAction, FileAction, FileOp};

use crate::error::OpError;
use crate::layers::commit_diff;
use crate::mount::with_mounted;
use crate::ops::{OpContext, chain_input, layer_dirs};
use crate::result::{LocalDir, OpOutput};
use crate::scratch::ScratchDir;

/// Where a COPY reads from once everything is mounted.
enum SourceRoot {
    /// A local directory (a build context, read in place when its ignore patterns allow).
    Local(LocalDir),
    /// The n-th mounted root.
    Mounted(usize),
}

pub(crate) fn run_file(
    cx: &OpContext<'_>,
    file: &FileOp,
    inputs: &[OpOutput],
) -> Result<OpOutput, OpError> {
    let base = match file.base {
        Some(index) => chain_input(inputs, index)?.to_vec(),
        None => Vec::new(),
    };
    let scratch = ScratchDir::new(cx.store, "file").map_err(OpError::io(
        "create a scratch dir in",
        cx.store.scratch_dir(),
    ))?;
    let dest = cx
        .snapshotter
        .prepare(&layer_dirs(&base), &scratch.path().join("dest"), &[])?;
    let mut roots: Vec<(RootMount, PathBuf)> =
        vec![(dest.mount().clone(), scratch.path().join("dest-root"))];

    // Each input a COPY reads: a local dir as is, a chain through its own (throwaway) snapshot.
    let mut sources: BTreeMap<u32, (SourceRoot, String)> = BTreeMap::new();
    let mut source_snapshots = Vec::new();
    for action in &file.actions {
        let FileAction::Copy(copy) = action else {
            continue;
        };
        if sources.contains_key(&copy.src) {
            continue;
        }
        let entry = match inputs.get(copy.src as usize) {
            Some(OpOutput::Local(local)) => (
                SourceRoot::Local(local.clone()),
                "build context".to_string(),
            ),
            Some(OpOutput::Chain(chain)) => {
                let snapshot = cx.snapshotter.prepare(
                    &layer_dirs(chain),
                    &scratch.path().join(format!("src-{}", copy.src)),
                    &[],
                )?;
                roots.push((
                    snapshot.mount().clone(),
                    scratch.path().join(format!("src-{}-root", copy.src)),
                ));
                source_snapshots.push(snapshot);
                (
                    SourceRoot::Mounted(roots.len() - 1),
                    "the source image".to_string(),
                )
            }
            None => return Err(OpError::MissingInput(format!("#{}", copy.src))),
        };
        sources.insert(copy.src, entry);
    }

    with_mounted(&roots, |paths| {
        let dest_root = &paths[0];
        for action in &file.actions {
            apply_action(action, dest_root, &sources, paths)?;
        }
        Ok(())
    })?;

    let upper = cx.snapshotter.diff(&dest)?;
    let mut chain = base;
    let layer = cx.phase(crate::progress::Phase::Layer, || {
        commit_diff(cx.store, &upper, chain.last(), &cx.layer_options)
    })?;
    chain.push(layer);
    Ok(OpOutput::Chain(chain))
}

fn apply_action(
    action: &FileAction,
    dest_root: &Path,
    sources: &BTreeMap<u32, (SourceRoot, String)>,
    mounted: &[PathBuf],
) -> Result<(), OpError> {
    match action {
        FileAction::Copy(copy) => {
            let (root, label) = sources
                .get(&copy.src)
                .ok_or_else(|| OpError::MissingInput(format!("#{}", copy.src)))?;
            let from_context = matches!(root, SourceRoot::Local(_));
            let mut options = copy_options(copy, label, from_context)?;
            let src_root = match root {
                SourceRoot::Local(local) => match &local.ignore {
                    // The context in place, its ignore patterns applied while copying: no staging
                    // of the whole context for one COPY. The selection is what the cache key
                    // checksummed (the same patterns from the same root).
                    Some(ignore) if ignore.can_read_in_place(&local.path, &options) => {
                        options.context_excludes = ignore.excludes.clone();
                        local.path.clone()
                    }
                    _ => local.selected_dir()?,
                },
                SourceRoot::Mounted(index) => mounted[*index].clone(),
            };
            kiln_fileop::copy(&src_root, dest_root, &options)?;
        }
        FileAction::Mkdir(mkdir) => {
            let owner = mkdir.owner.as_ref().map(chown);
            kiln_fileop::mkdir(
                dest_root,
                &mkdir.path,
                mkdir.mode,
                mkdir.make_parents,
                owner.as_ref(),
                None,
            )?;
        }
        FileAction::Mkfile(mkfile) => {
            let owner = mkfile.owner.as_ref().map(chown);
            kiln_fileop::mkfile(
                dest_root,
                &mkfile.path,
                mkfile.data.as_bytes(),
                mkfile.mode,
                owner.as_ref(),
                None,
            )?;
        }
        FileAction::Rm(rm) => {
            kiln_fileop::rm(dest_root, &rm.path, rm.allow_not_found, rm.allow_wildcard)?;
        }
    }
    Ok(())
}

/// The `--chown` spec text `user[:group]` of an op's owner.
fn chown(owner: &kiln_llb::Chown) -> Chown {
    let part = |spec: &kiln_llb::UserSpec| match spec {
        kiln_llb::UserSpec::Id(id) => id.to_string(),
        kiln_llb::UserSpec::Name(name) => name.clone(),
    };
    match (&owner.user, &owner.group) {
        (Some(kiln_llb::UserSpec::Id(uid)), Some(kiln_llb::UserSpec::Id(gid))) => Chown::Ids {
            uid: *uid,
            gid: *gid,
        },
        (user, Some(group)) => Chown::Spec(format!(
            "{}:{}",
            user.as_ref().map(part).unwrap_or_default(),
            part(group)
        )),
        (Some(user), None) => Chown::Spec(part(user)),
        (None, None) => Chown::Ids { uid: 0, gid: 0 },
    }
}

fn copy_options(
    copy: &CopyAction,
    label: &str,
    from_context: bool,
) -> Result<CopyOptions, OpError> {
    // `--parents` with a `/./` pivot arrives as (pivot dir, pattern below it); fileop reads the
    // pivot from the source text.
    let source = match (copy.parents, copy.include_patterns.as_slice()) {
        (true, [pattern]) if copy.src_path == "/" => pattern.clone(),
        (true, [pattern]) => format!("{}/./{}", copy.src_path.trim_start_matches('/'), pattern),
        (_, []) => copy.src_path.clone(),
        _ => {
            return Err(OpError::Unsupported(
                "COPY with several include patterns".into(),
            ));
        }
    };
    let mut options = CopyOptions::new(vec![source], copy.dest.clone());
    options.op = if copy.attempt_unpack { "ADD" } else { "COPY" }.to_string();
    options.source_label = label.to_string();
    options.chown = copy.chown.as_ref().map(chown);
    options.preserve_owner = !from_context;
    options.chmod = match &copy.chmod {
        None => None,
        Some(kiln_llb::Chmod::Octal(bits)) => Some(Chmod::Octal(*bits)),
        Some(kiln_llb::Chmod::Symbolic(text)) => Some(Chmod::parse(text)?),
    };
    options.follow_symlinks = copy.follow_symlinks;
    options.dir_copy_contents = copy.dir_copy_contents;
    options.create_dest_path = copy.create_dest_path;
    options.allow_wildcard = copy.allow_wildcard;
    options.allow_empty_wildcard = copy.allow_empty_wildcard;
    options.excludes = copy.exclude_patterns.clone();
    options.parents = copy.parents;
    options.attempt_unpack = copy.attempt_unpack;
    Ok(options)
}
