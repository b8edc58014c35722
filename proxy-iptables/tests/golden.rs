//! Golden files: `testdata/<scenario>.golden` holds the exact full render of each scenario.
//! `UPDATE_GOLDEN=1 cargo test -p sluice-proxy-iptables --test golden` rewrites them.

mod common;

use std::path::PathBuf;

#[test]
fn golden_files_match() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for (name, s, e) in common::scenarios() {
        let got = common::render_full(&s, &e);
        let path = dir.join(format!("{name}.golden"));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
        if got != want {
            failures.push(format!("--- {name}: got ---\n{got}--- want ---\n{want}"));
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatch (UPDATE_GOLDEN=1 to accept):\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_golden_file_has_a_scenario() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let names: Vec<&str> = common::scenarios().iter().map(|(n, _, _)| *n).collect();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            continue; // testdata/partial: incremental renders (tests/partial.rs)
        }
        let file = entry.file_name().into_string().unwrap();
        let stem = file
            .strip_suffix(".golden")
            .expect("only .golden files in testdata");
        assert!(names.contains(&stem), "stale golden file {file}");
    }
}

#[test]
fn render_is_deterministic() {
    for (_, s, e) in common::scenarios() {
        assert_eq!(common::render_full(&s, &e), common::render_full(&s, &e));
    }
}
