//! Golden-file checks for the modes' render tests (each mode compares its pure render with
//! `testdata/<scenario>.golden`; `UPDATE_GOLDEN=1` rewrites the files instead).

use std::path::Path;

/// Whether this run rewrites golden files (`UPDATE_GOLDEN=1`).
pub fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

/// Compares each `(name, rendered)` with `dir/<name>.golden` (or rewrites them when
/// [`updating`]); panics listing every mismatch.
pub fn check<'a>(dir: &Path, cases: impl IntoIterator<Item = (&'a str, String)>) {
    let mut failures = Vec::new();
    for (name, got) in cases {
        let path = dir.join(format!("{name}.golden"));
        if updating() {
            std::fs::create_dir_all(dir).expect("creating the golden directory");
            std::fs::write(&path, &got).expect("writing a golden file");
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

/// Panics on a `dir/*.golden` file whose scenario is not in `names` (subdirectories are
/// skipped; any other file is an error).
pub fn check_no_stale(dir: &Path, names: &[&str]) {
    for entry in std::fs::read_dir(dir).expect("reading the golden directory") {
        let entry = entry.expect("reading the golden directory");
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let file = entry.file_name().to_string_lossy().into_owned();
        let stem = file
            .strip_suffix(".golden")
            .unwrap_or_else(|| panic!("only .golden files in {}: {file}", dir.display()));
        assert!(names.contains(&stem), "stale golden file {file}");
    }
}
