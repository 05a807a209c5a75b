//! libFuzzer target: any bytes as a Dockerfile (parse_ast, dump, parse_dockerfile, re-parsing
//! of ONBUILD triggers, parse_instruction) and as a `RUN --mount=` value. A panic is a finding.
#![no_main]

use kiln_frontend::instructions::{InstructionKind, parse_mount};
use kiln_frontend::parser::{dump, parse_ast, parse_dockerfile, parse_instruction};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ast) = parse_ast(source) {
        let _ = dump(&ast);
    }
    if let Ok(dockerfile) = parse_dockerfile(source, "Dockerfile") {
        let escape = dockerfile.directives.escape;
        for instruction in dockerfile.stages.iter().flat_map(|s| &s.instructions) {
            match &instruction.kind {
                InstructionKind::Onbuild(onbuild) => {
                    let reparsed = parse_instruction(&onbuild.trigger, escape)
                        .unwrap_or_else(|e| panic!("trigger {:?}: {e}", onbuild.trigger));
                    // A first line ending in an escaped blank becomes a continuation when
                    // parsed again (as in Docker); otherwise the trigger must round-trip.
                    let first_line = onbuild.trigger.lines().next().unwrap_or_default();
                    if !first_line.trim_end_matches([' ', '\t']).ends_with(escape) {
                        assert_eq!(reparsed.kind, onbuild.instruction.kind);
                    }
                }
                InstructionKind::Run(run) => {
                    for mount in &run.mounts {
                        let _ = parse_mount(mount);
                    }
                }
                _ => {}
            }
        }
    }
    let _ = parse_instruction(source, '\\');
    let _ = parse_mount(source);
});
