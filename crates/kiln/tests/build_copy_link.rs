//! `COPY --link` and the build cache with the real binary: the linked layer is rebased onto its
//! stage's base, so the steps after it record chains with new chain ids; an unchanged rebuild and
//! a rebuild after the base changed and came back must still hit.

mod common;

use std::path::Path;
use std::process::Output;

use common::{Kiln, build_busybox_with_kiln, stderr};

const DOCKERFILE: &str = "FROM busybox\n\
ARG BASE=one\n\
RUN echo $BASE > /base\n\
COPY --link a.txt /a.txt\n\
RUN cat /base /a.txt > /both\n";

fn build(kiln: &Kiln, context: &Path, base: &str) -> Output {
    let dest = kiln.work.path().join(format!("rootfs-{base}"));
    let output = kiln.ok(&[
        "build",
        "--progress=plain",
        "--build-arg",
        &format!("BASE={base}"),
        "--output",
        &format!("type=local,dest={}", dest.display()),
        context.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(dest.join("both")).unwrap(),
        format!("{base}\na\n")
    );
    output
}

/// The Dockerfile steps that ran (`#N DONE`), by description.
fn ran(output: &Output) -> Vec<String> {
    let text = stderr(output);
    let mut names = std::collections::BTreeMap::new();
    let mut ran = Vec::new();
    for line in text.lines() {
        let Some((id, rest)) = line.strip_prefix('#').and_then(|l| l.split_once(' ')) else {
            continue;
        };
        if rest.starts_with('[') && !names.contains_key(id) {
            names.insert(id.to_string(), rest.to_string());
        } else if rest.starts_with("DONE")
            && let Some(name) = names.get(id)
            // The base, the context transfer and the merge itself (stacking, never cached).
            && !name.contains(" FROM ")
            && !name.starts_with("[internal]")
            && !name.contains("] LINK ")
        {
            ran.push(name.clone());
        }
    }
    ran
}

#[test]
fn steps_after_copy_link_hit_on_a_rebuild_and_after_a_rebase() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context("link", &[("Dockerfile", DOCKERFILE), ("a.txt", "a\n")]);
    let first = build(&kiln, &context, "one");
    assert_eq!(ran(&first).len(), 3, "{}", stderr(&first));

    let again = build(&kiln, &context, "one");
    assert_eq!(ran(&again), Vec::<String>::new(), "{}", stderr(&again));

    // Another base: the linked copy itself still hits, the steps around it run.
    let other = build(&kiln, &context, "two");
    let other_ran = ran(&other);
    assert_eq!(other_ran.len(), 2, "{}", stderr(&other));
    assert!(
        other_ran.iter().all(|step| !step.contains("COPY --link")),
        "{other_ran:?}"
    );
    // Both bases now hit, the rebased layers found by their chain ids.
    for base in ["one", "two"] {
        let hit = build(&kiln, &context, base);
        assert_eq!(ran(&hit), Vec::<String>::new(), "{}", stderr(&hit));
    }
}
