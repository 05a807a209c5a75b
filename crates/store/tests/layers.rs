//! Extracted layers: prepare in tmp/, commit by rename under a short name, races and leftovers.

use std::fs;
use std::path::Path;

use kiln_image::Digest;
use kiln_store::{Store, chain_id};

fn fill(dir: &Path, marker: &str) {
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(dir.join("etc/marker"), marker).unwrap();
}

#[test]
fn a_committed_layer_gets_a_short_directory_and_its_metadata() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let base_diff = Digest::of(b"base");
    let top_diff = Digest::of(b"top");
    let base_chain = chain_id(None, &base_diff);
    let top_chain = chain_id(Some(&base_chain), &top_diff);
    assert!(store.layer_path(&base_chain).unwrap().is_none());

    let temp = store.prepare_layer_dir().unwrap();
    assert!(temp.path().starts_with(store.scratch_dir()));
    fill(temp.path(), "base");
    let temp_path = temp.path().to_path_buf();
    let base_path = store
        .commit_layer(temp, &base_chain, &base_diff, None)
        .unwrap();
    assert!(!temp_path.exists());
    assert_eq!(base_path.parent().unwrap(), root.path().join("layers"));
    // Short enough that 127 of them fit in one overlay mount option string.
    assert!(base_path.file_name().unwrap().len() <= 8, "{base_path:?}");
    assert_eq!(
        fs::read_to_string(base_path.join("etc/marker")).unwrap(),
        "base"
    );

    let temp = store.prepare_layer_dir().unwrap();
    fill(temp.path(), "top");
    let top_path = store
        .commit_layer(temp, &top_chain, &top_diff, Some(&base_chain))
        .unwrap();
    assert_ne!(top_path, base_path);
    let info = store.layer_info(&top_chain).unwrap().unwrap();
    assert_eq!(info.path, top_path);
    assert_eq!(info.diff_id, top_diff);
    assert_eq!(info.parent, Some(base_chain.clone()));
    assert_eq!(store.layer_path(&base_chain).unwrap(), Some(base_path));
}

#[test]
fn an_uncommitted_layer_dir_is_removed_on_drop() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let temp = store.prepare_layer_dir().unwrap();
    fill(temp.path(), "x");
    let path = temp.path().to_path_buf();
    drop(temp);
    assert!(!path.exists());
    assert_eq!(fs::read_dir(root.path().join("layers")).unwrap().count(), 0);
}

#[test]
fn committing_a_chain_id_twice_keeps_the_first_and_drops_the_second() {
    let root = tempfile::tempdir().unwrap();
    let first = Store::open(root.path()).unwrap();
    let second = Store::open(root.path()).unwrap();
    let diff = Digest::of(b"layer");
    let chain = chain_id(None, &diff);

    let a = first.prepare_layer_dir().unwrap();
    fill(a.path(), "first");
    let b = second.prepare_layer_dir().unwrap();
    fill(b.path(), "second");
    let b_path = b.path().to_path_buf();
    let winner = first.commit_layer(a, &chain, &diff, None).unwrap();
    let loser = second.commit_layer(b, &chain, &diff, None).unwrap();
    assert_eq!(winner, loser);
    assert_eq!(
        fs::read_to_string(winner.join("etc/marker")).unwrap(),
        "first"
    );
    assert!(!b_path.exists());
    assert_eq!(fs::read_dir(root.path().join("layers")).unwrap().count(), 1);
}

#[test]
fn concurrent_commits_of_one_chain_id_from_threads_all_succeed() {
    let root = tempfile::tempdir().unwrap();
    let diff = Digest::of(b"shared");
    let chain = chain_id(None, &diff);
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let path = root.path().to_path_buf();
            let diff = diff.clone();
            let chain = chain.clone();
            std::thread::spawn(move || {
                let store = Store::open(&path).unwrap();
                let temp = store.prepare_layer_dir().unwrap();
                fill(temp.path(), &format!("thread {i}"));
                store.commit_layer(temp, &chain, &diff, None).unwrap()
            })
        })
        .collect();
    let paths: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(paths.iter().all(|p| *p == paths[0]));
    assert_eq!(fs::read_dir(root.path().join("layers")).unwrap().count(), 1);
}

#[test]
fn leftovers_of_a_crashed_commit_do_not_block_later_commits() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let diff = Digest::of(b"one");
    let chain = chain_id(None, &diff);
    let temp = store.prepare_layer_dir().unwrap();
    fill(temp.path(), "one");
    let path = store.commit_layer(temp, &chain, &diff, None).unwrap();

    // A directory renamed into place by a commit whose transaction never landed, under the id the
    // next commit will get.
    let next_id: u64 = path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        + 1;
    let orphan = root.path().join("layers").join(next_id.to_string());
    fill(&orphan, "orphan");

    let diff2 = Digest::of(b"two");
    let chain2 = chain_id(Some(&chain), &diff2);
    let temp = store.prepare_layer_dir().unwrap();
    fill(temp.path(), "two");
    let path2 = store
        .commit_layer(temp, &chain2, &diff2, Some(&chain))
        .unwrap();
    assert_eq!(fs::read_to_string(path2.join("etc/marker")).unwrap(), "two");

    // A recorded layer whose directory vanished is not committed, and can be committed again.
    fs::remove_dir_all(&path).unwrap();
    assert!(store.layer_path(&chain).unwrap().is_none());
    let temp = store.prepare_layer_dir().unwrap();
    fill(temp.path(), "again");
    let again = store.commit_layer(temp, &chain, &diff, None).unwrap();
    assert_eq!(store.layer_path(&chain).unwrap(), Some(again));
}
