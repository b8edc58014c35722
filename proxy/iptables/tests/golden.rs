//! Golden files: `testdata/<scenario>.golden` holds the exact full render of each scenario.
//! `UPDATE_GOLDEN=1 cargo test -p sluice-proxy-iptables --test golden` rewrites them.

mod common;

use std::path::PathBuf;

use sluice_proxy::golden;

#[test]
fn golden_files_match() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let scenarios = common::scenarios();
    golden::check(
        &dir,
        scenarios
            .iter()
            .map(|(name, s, e)| (*name, common::render_full(s, e))),
    );
}

/// testdata/partial holds the incremental renders (tests/partial.rs).
#[test]
fn every_golden_file_has_a_scenario() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let names: Vec<&str> = common::scenarios().iter().map(|(n, _, _)| *n).collect();
    golden::check_no_stale(&dir, &names);
}

#[test]
fn render_is_deterministic() {
    for (_, s, e) in common::scenarios() {
        assert_eq!(common::render_full(&s, &e), common::render_full(&s, &e));
    }
}
