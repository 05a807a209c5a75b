//! Parses and lowers (offline: every base image resolves to an empty config) each real-world
//! Dockerfile of the conformance corpus that is not a template. `index.tsv` marks the
//! docker-library templates `TEMPLATE`; the nginx `Dockerfile-*.template` files are templates too
//! (the corpus README says so) but lack the mark, so `.template.` in the name also counts.

use std::collections::BTreeMap;

use kiln_frontend::lower::{LowerOptions, OfflineResolver, lower};
use kiln_llb::{OpKind, Platform};

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/conformance/dockerfiles"
);

fn options() -> LowerOptions {
    LowerOptions::new(Platform {
        os: "linux".to_string(),
        architecture: "amd64".to_string(),
        variant: None,
    })
}

/// Fixtures that are broken on purpose upstream (compose's "wrong composefile" test).
const KNOWN_INVALID: &[&str] =
    &["docker__compose__pkg__e2e__fixtures__wrong-composefile__service1__Dockerfile.Dockerfile"];

#[test]
fn every_real_world_dockerfile_lowers_offline() {
    let index = std::fs::read_to_string(format!("{CORPUS}/index.tsv")).unwrap();
    let mut lowered_count = 0;
    let mut failures = BTreeMap::new();
    for line in index.lines().skip(1) {
        let mut columns = line.split('\t');
        let file = columns.next().unwrap();
        let features = columns.nth(4).unwrap_or_default();
        if features.contains("TEMPLATE") || file.contains(".template.") {
            continue;
        }
        let text = std::fs::read_to_string(format!("{CORPUS}/{file}")).unwrap();
        let parsed = kiln_frontend::parser::parse_dockerfile(&text, file);
        if KNOWN_INVALID.contains(&file) {
            assert!(parsed.is_err(), "{file} is invalid on purpose but parsed");
            continue;
        }
        let dockerfile = match parsed {
            Ok(dockerfile) => dockerfile,
            Err(error) => {
                failures.insert(file.to_string(), format!("parse: {error}"));
                continue;
            }
        };
        match lower(&dockerfile, &options(), &OfflineResolver) {
            Ok(lowered) => {
                // The definition is consistent and holds the target's root.
                lowered.definition.validate().unwrap();
                assert!(
                    lowered.definition.contains(&lowered.target.root.digest),
                    "{file}"
                );
                // Every RUN of the target's stages became an Exec op, and every layer-producing
                // history entry of the target has an op behind it.
                let execs = lowered
                    .definition
                    .ops()
                    .iter()
                    .filter(|op| matches!(op.kind, OpKind::Exec(_)))
                    .count();
                let runs: usize = lowered
                    .stages
                    .iter()
                    .map(|stage| {
                        dockerfile.stages[stage.index]
                            .instructions
                            .iter()
                            .filter(|i| {
                                matches!(
                                    i.kind,
                                    kiln_frontend::instructions::InstructionKind::Run(_)
                                )
                            })
                            .count()
                    })
                    .sum();
                assert!(execs <= runs, "{file}: {execs} execs for {runs} RUNs");
                assert!(runs == 0 || execs > 0, "{file}: RUNs but no exec ops");
                lowered_count += 1;
            }
            Err(error) => {
                failures.insert(file.to_string(), format!("lower: {error}"));
            }
        }
    }
    println!("lowered {lowered_count} Dockerfiles offline");
    assert!(
        failures.is_empty(),
        "{} failed:\n{:#?}",
        failures.len(),
        failures
    );
    assert!(
        lowered_count >= 100,
        "only {lowered_count} Dockerfiles were lowered"
    );
}

/// BuildKit's parser test files: lowering may reject some (they test syntax, not builds), but it
/// must never panic, and what it accepts must be a consistent definition.
#[test]
fn parser_testfiles_lower_without_panicking() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/parser/testfiles"
    );
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    let (mut lowered_count, mut rejected) = (0, Vec::new());
    for case in entries {
        let Ok(text) = std::fs::read_to_string(case.join("Dockerfile")) else {
            continue;
        };
        let Ok(dockerfile) = kiln_frontend::parser::parse_dockerfile(&text, "Dockerfile") else {
            continue;
        };
        match lower(&dockerfile, &options(), &OfflineResolver) {
            Ok(lowered) => {
                lowered.definition.validate().unwrap();
                lowered_count += 1;
            }
            Err(error) => rejected.push(format!("{}: {error}", case.display())),
        }
    }
    println!("lowered {lowered_count} parser test files; rejected: {rejected:#?}");
    assert!(lowered_count > 20, "only {lowered_count} lowered");
}
