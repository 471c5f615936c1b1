//! Golden tests of the config's error messages: every `tests/ui/NAME.toml` is a bad config and
//! `tests/ui/NAME.err` the exact message it must get (file, line, column, key and text, then a
//! newline). `BLESS=1 cargo test -p sluicegate-config --test ui` rewrites the `.err` files from
//! what the parser says now; review the diff before committing it.

use sluicegate_config::Config;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui")
}

/// The error text for `file`, as `sluicegate check` would print it (named by the file name only,
/// so the text does not depend on where the repository is).
fn error_of(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read it: {e}"))?;
    let name = file.file_name().unwrap().to_string_lossy();
    match Config::parse(&text, &name, file.parent().unwrap()) {
        Ok(_) => Err("it parses, but a ui case must be refused".into()),
        Err(e) => Ok(format!("{e}\n")),
    }
}

#[test]
fn bad_configs_get_their_exact_messages() {
    let bless = std::env::var_os("BLESS").is_some_and(|v| !v.is_empty() && v != "0");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(ui_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    let mut failures = String::new();
    let mut checked = 0;
    for path in &cases {
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => {}
            Some("err") if path.with_extension("toml").exists() => continue,
            _ => {
                let _ = writeln!(
                    failures,
                    "{}: not a ui case (only NAME.toml and its NAME.err belong here)",
                    path.display()
                );
                continue;
            }
        }
        checked += 1;
        let got = match error_of(path) {
            Ok(got) => got,
            Err(why) => {
                let _ = writeln!(failures, "{}: {why}", path.display());
                continue;
            }
        };
        let err_file = path.with_extension("err");
        if bless {
            std::fs::write(&err_file, &got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&err_file) {
            Ok(expected) if expected == got => {}
            Ok(expected) => {
                let _ = writeln!(
                    failures,
                    "{}:\n  expected: {expected:?}\n  got:      {got:?}",
                    path.display()
                );
            }
            Err(e) => {
                let _ = writeln!(
                    failures,
                    "{}: {e} (BLESS=1 writes it)\n  got: {got:?}",
                    err_file.display()
                );
            }
        }
    }
    assert!(checked >= 12, "only {checked} ui cases in {:?}", ui_dir());
    assert!(
        failures.is_empty(),
        "{failures}(run with BLESS=1 to accept the messages as they are now)"
    );
}
