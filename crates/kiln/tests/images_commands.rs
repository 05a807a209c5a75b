//! End-to-end tests of `kiln images`, `tag`, `rmi`, `inspect`, `history` and `prune` on images
//! written into a temp store with the store API.

mod common;

use common::{Kiln, make_image, stderr, stdout};

const APP: &str = "docker.io/library/app:latest";
const OTHER: &str = "docker.io/library/other:1.0";

fn two_images(kiln: &Kiln) -> (common::TestImage, common::TestImage) {
    let app = make_image(
        kiln.root.path(),
        APP,
        &[
            &[("etc/app.conf", "app config\n")],
            &[("bin/app", "#!/bin/sh\necho app\n")],
        ],
    );
    let other = make_image(kiln.root.path(), OTHER, &[&[("other.txt", "other\n")]]);
    (app, other)
}

#[test]
fn images_lists_familiar_names_ids_and_sizes() {
    let kiln = Kiln::new();
    let (app, other) = two_images(&kiln);
    let out = stdout(&kiln.ok(&["images"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let header: Vec<&str> = lines[0]
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(header, ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]);
    let app_line = lines
        .iter()
        .find(|l| l.starts_with("app "))
        .expect("app row");
    assert!(app_line.contains("latest"), "{app_line}");
    assert!(app_line.contains(&app.config.hex()[..12]), "{app_line}");
    assert!(app_line.contains("years ago"), "{app_line}");
    assert!(app_line.trim_end().ends_with('B'), "{app_line}");
    let other_line = lines
        .iter()
        .find(|l| l.starts_with("other "))
        .expect("other row");
    assert!(other_line.contains("1.0"), "{other_line}");
    assert!(
        other_line.contains(&other.config.hex()[..12]),
        "{other_line}"
    );

    let quiet = stdout(&kiln.ok(&["images", "-q"]));
    let mut ids: Vec<&str> = quiet.lines().collect();
    ids.sort();
    let mut expected = vec![&app.config.hex()[..12], &other.config.hex()[..12]];
    expected.sort();
    assert_eq!(ids, expected);

    let digests = stdout(&kiln.ok(&["images", "--digests", "app"]));
    assert!(
        digests.lines().next().unwrap().contains("DIGEST"),
        "{digests}"
    );
    assert!(digests.contains(&app.manifest.to_string()), "{digests}");
    assert_eq!(
        digests.lines().count(),
        2,
        "filter keeps only app: {digests}"
    );

    let json = stdout(&kiln.ok(&["images", "--format", "json"]));
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 2);
    let app_row = rows
        .iter()
        .find(|r| r["Repository"] == "app")
        .expect("app json row");
    assert_eq!(app_row["Tag"], "latest");
    assert_eq!(app_row["ID"], &app.config.hex()[..12]);

    let template = stdout(&kiln.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]));
    let mut names: Vec<&str> = template.lines().collect();
    names.sort();
    assert_eq!(names, ["app:latest", "other:1.0"]);
}

#[test]
fn tag_by_name_and_by_id_prefix_and_unknown_source_fails() {
    let kiln = Kiln::new();
    let (app, _) = two_images(&kiln);
    kiln.ok(&["tag", "app", "app:v2"]);
    kiln.ok(&["tag", &app.config.hex()[..8], "127.0.0.1:5000/team/app:v3"]);
    let out = stdout(&kiln.ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]));
    for expected in ["app:latest", "app:v2", "127.0.0.1:5000/team/app:v3"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{expected} ")))
            .unwrap_or_else(|| panic!("{expected} missing from:\n{out}"));
        assert!(line.ends_with(&app.config.hex()[..12]), "{line}");
    }
    let failed = kiln.run(&["tag", "missing:1", "x:1"]);
    assert!(!failed.status.success());
    assert!(
        stderr(&failed).contains("No such image: missing:1"),
        "{}",
        stderr(&failed)
    );
    let digest_target = kiln.run(&["tag", "app", &format!("app@{}", app.manifest)]);
    assert!(!digest_target.status.success());
}

#[test]
fn rmi_untags_names_and_an_id_needs_force_across_repositories() {
    let kiln = Kiln::new();
    let (app, other) = two_images(&kiln);
    kiln.ok(&["tag", "app", "copy:latest"]);

    let out = stdout(&kiln.ok(&["rmi", "copy"]));
    assert_eq!(out, "Untagged: copy:latest\n");

    kiln.ok(&["tag", "app", "copy:latest"]);
    let refused = kiln.run(&["rmi", &app.config.hex()[..12]]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("must be forced"),
        "{}",
        stderr(&refused)
    );

    let forced = stdout(&kiln.ok(&["rmi", "-f", &app.config.hex()[..12]]));
    assert!(forced.contains("Untagged: app:latest"), "{forced}");
    assert!(forced.contains("Untagged: copy:latest"), "{forced}");
    assert!(
        forced.contains(&format!("Deleted: {}", app.config)),
        "{forced}"
    );

    let partly = kiln.run(&["rmi", "nope", "other:1.0"]);
    assert!(
        !partly.status.success(),
        "an unknown name fails the command"
    );
    assert!(
        stderr(&partly).contains("No such image: nope"),
        "{}",
        stderr(&partly)
    );
    assert!(
        stdout(&partly).contains("Untagged: other:1.0"),
        "the known name is still removed"
    );
    assert!(stdout(&partly).contains(&format!("Deleted: {}", other.config)));
    assert_eq!(stdout(&kiln.ok(&["images", "-q"])), "");
}

#[test]
fn inspect_prints_docker_shaped_json_and_templates() {
    let kiln = Kiln::new();
    let (app, other) = two_images(&kiln);
    kiln.ok(&["tag", "app", "app:v2"]);
    let out = stdout(&kiln.ok(&["inspect", "app", "other:1.0"]));
    assert!(
        out.starts_with("[\n    {"),
        "four-space indentation like docker:\n{out}"
    );
    let documents: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
    let documents = documents.as_array().expect("a JSON array");
    assert_eq!(documents.len(), 2);
    let first = &documents[0];
    assert_eq!(first["Id"], app.config.to_string());
    let mut tags: Vec<&str> = first["RepoTags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, ["app:latest", "app:v2"]);
    assert_eq!(
        first["RepoDigests"],
        serde_json::json!([format!("app@{}", app.manifest)])
    );
    assert_eq!(first["Created"], "2024-01-01T00:00:00Z");
    assert_eq!(first["Os"], "linux");
    assert_eq!(first["Config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(first["Config"]["Labels"]["test.name"], APP);
    assert_eq!(first["RootFS"]["Type"], "layers");
    let layers: Vec<String> = app.diff_ids.iter().map(ToString::to_string).collect();
    assert_eq!(first["RootFS"]["Layers"], serde_json::json!(layers));
    assert!(first["Size"].as_u64().unwrap() > 0);
    assert!(
        first["Metadata"]["LastTagTime"]
            .as_str()
            .unwrap()
            .starts_with("20")
    );
    assert_eq!(documents[1]["Id"], other.config.to_string());

    let formatted =
        stdout(&kiln.ok(&["inspect", "--format", "{{.Id}} {{json .Config.Cmd}}", "app"]));
    assert_eq!(formatted, format!("{} [\"sh\"]\n", app.config));

    let missing = kiln.run(&["inspect", "app", "ghost"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("No such image: ghost"));
}

#[test]
fn history_lists_steps_newest_first() {
    let kiln = Kiln::new();
    let (app, _) = two_images(&kiln);
    let out = stdout(&kiln.ok(&["history", "app"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "header, CMD, two layers:\n{out}");
    assert!(lines[0].starts_with("IMAGE"));
    for column in ["CREATED", "CREATED BY", "SIZE", "COMMENT"] {
        assert!(lines[0].contains(column), "{}", lines[0]);
    }
    assert!(
        lines[1].starts_with(&app.config.hex()[..12]),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("CMD [\"sh\"]") && lines[1].contains(" 0B"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("<missing>") && lines[2].contains("layer1"),
        "{}",
        lines[2]
    );
    assert!(lines[3].contains("layer0"), "{}", lines[3]);
    assert!(lines[3].contains("years ago"), "{}", lines[3]);

    let quiet = stdout(&kiln.ok(&["history", "-q", "--no-trunc", "app"]));
    assert_eq!(quiet, format!("{}\n<missing>\n<missing>\n", app.config));
}

#[test]
fn prune_removes_only_unreferenced_blobs() {
    let kiln = Kiln::new();
    let (app, other) = two_images(&kiln);
    let dry = stdout(&kiln.ok(&["prune", "--dry-run"]));
    assert!(
        dry.contains("Total space that would be reclaimed: 0B"),
        "{dry}"
    );

    kiln.ok(&["rmi", "other:1.0"]);
    let dry = stdout(&kiln.ok(&["prune", "--dry-run"]));
    assert!(dry.contains(&other.layer_blobs[0].to_string()), "{dry}");
    let blob_path = |d: &kiln_image::Digest| kiln.root.path().join("blobs/sha256").join(d.hex());
    assert!(
        blob_path(&other.layer_blobs[0]).exists(),
        "a dry run removes nothing"
    );

    let out = stdout(&kiln.ok(&["prune"]));
    assert!(out.contains("Deleted blobs:"), "{out}");
    for removed in [&other.manifest, &other.config, &other.layer_blobs[0]] {
        assert!(out.contains(&removed.to_string()), "{removed} in {out}");
        assert!(!blob_path(removed).exists());
    }
    assert!(!out.contains("Total reclaimed space: 0B"), "{out}");
    for kept in [
        &app.manifest,
        &app.config,
        &app.layer_blobs[0],
        &app.layer_blobs[1],
    ] {
        assert!(!out.contains(&kept.to_string()), "{kept} must stay: {out}");
        assert!(blob_path(kept).exists());
    }
    // The remaining image is intact.
    kiln.ok(&["inspect", "app"]);
    let again = stdout(&kiln.ok(&["prune", "-a"]));
    assert!(again.contains("Total reclaimed space: 0B"), "{again}");
}
