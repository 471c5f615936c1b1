//! The configs shipped in `examples/` pass the real binary's `check` as they are, and errors about a
//! plugin's settings point at the settings' line in the config.

use sluicegate::config::Config;
use sluicegate::gateway::Gateway;
use sluicegate::metrics::Metrics;
use sluicegate::plugin::{PluginRuntime, RuntimeOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every `*.toml` in `examples/`, read from the directory so a new example is covered too.
fn example_configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_config_passes_check() {
    let files = example_configs();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n == "basic.toml") && names.iter().any(|n| n == "tls.toml"),
        "the examples were not found: {names:?}"
    );
    let mut failures = Vec::new();
    for file in &files {
        let out = Command::new(env!("CARGO_BIN_EXE_sluicegate"))
            .args(["check", "--config"])
            .arg(file)
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "sluicegate check --config {}: {}\n--- stdout\n{}--- stderr\n{}",
                file.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Builds `text` (named `refused.toml`) into a gateway and returns the error's text. One runtime
/// for every call, so each embedded plugin is compiled once.
fn build_error(text: &str) -> String {
    static RUNTIME: OnceLock<PluginRuntime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| PluginRuntime::new(RuntimeOptions::default()).unwrap());
    let config = Config::parse(text, "refused.toml", Path::new(".")).unwrap();
    let metrics = Metrics::new(runtime.clone());
    match Gateway::build(config, runtime, &metrics) {
        Ok(_) => panic!("the config was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const ROUTE: &str = "[[routes]]\ncluster = \"web\"\n\n";
const ENDPOINT: &str = "[[clusters.endpoints]]\naddress = \"127.0.0.1:9001\"\n";

#[test]
fn refused_balancer_settings_point_at_the_settings() {
    // Inline settings: line 7, column 21 is the `{`.
    let text = format!(
        "{ROUTE}[[clusters]]\nname = \"web\"\nbalancer = \"ring-hash\"\n\
         balancer_settings = {{ vnodes_per_weight = 0 }}\n{ENDPOINT}"
    );
    let err = build_error(&text);
    assert!(
        err.starts_with("refused.toml:7:21: [[clusters]] balancer_settings: plugin `ring-hash`"),
        "{err}"
    );
    assert!(
        err.contains("refused its settings in init: vnodes_per_weight must be 1 to 10000, not 0"),
        "{err}"
    );

    // Settings as a table of their own: the error names its header's line.
    let text = format!(
        "{ROUTE}[[clusters]]\nname = \"web\"\nbalancer = \"ip-hash\"\n\
         {ENDPOINT}\n[clusters.balancer_settings]\nsticky = true\n"
    );
    let err = build_error(&text);
    assert!(
        err.starts_with("refused.toml:10:1: [clusters.balancer_settings]: plugin `ip-hash`"),
        "{err}"
    );
    assert!(err.contains("refused its settings in init"), "{err}");
}

#[test]
fn other_plugin_errors_point_at_the_plugin_name() {
    // A plugin that is not there: the name is wrong, not the settings.
    let text = format!(
        "{ROUTE}[[clusters]]\nname = \"web\"\nbalancer = \"no-such-balancer\"\n\
         balancer_settings = {{ x = 1 }}\n{ENDPOINT}"
    );
    let err = build_error(&text);
    assert!(
        err.starts_with("refused.toml:6:12: [[clusters]] balancer: "),
        "{err}"
    );
    assert!(err.contains("no-such-balancer"), "{err}");

    // A balancer used as a filter, with settings it would take: the name is wrong again.
    let text = format!(
        "{ROUTE}[[filters]]\nplugin = \"ring-hash\"\nsettings = {{ key = \"path\" }}\n\n\
         [[clusters]]\nname = \"web\"\n{ENDPOINT}"
    );
    let err = build_error(&text);
    assert!(
        err.starts_with("refused.toml:5:10: [[filters]] plugin: "),
        "{err}"
    );
}
