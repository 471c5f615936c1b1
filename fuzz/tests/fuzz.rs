//! The fuzz targets in CI: each runs its corpus and then a bounded, seeded campaign of mutations
//! (a few seconds at most, so the suite stays fast), and every saved crash is replayed. A failure
//! saves its input under `fuzz/crashes/<target>/`; the fixed seed makes a CI run repeatable.

use sluicegate_fuzz::{Budget, TARGETS, campaign, replay_crashes, strict_target, target};
use std::path::Path;
use std::time::Duration;

/// The compiled-plugin cache the host's integration tests use too: plugins compile once per build.
fn cache_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_TARGET_TMPDIR"), "/plugin-cache"))
}

/// Runs `name` for at most `iterations` inputs or 4 s, then replays its crashes; fails on any
/// finding, naming the saved files.
fn fuzz(name: &str, iterations: u64) {
    let mut t = target(name, cache_dir()).unwrap();
    let report = campaign(
        t.as_mut(),
        Budget {
            iterations,
            time: Duration::from_secs(4),
            seed: 0x5eed_2026,
        },
    );
    eprintln!(
        "{name}: {} inputs in {:.1?} ({:.0}/s), {} behaviours, corpus {}",
        report.iterations,
        report.elapsed,
        report.rate(),
        report.signatures,
        report.corpus
    );
    let findings: Vec<String> = report
        .findings
        .iter()
        .map(|f| format!("{} ({})", f.what, f.saved.display()))
        .collect();
    assert!(findings.is_empty(), "{name}:\n{}", findings.join("\n"));
    // At least the corpus ran: a campaign that ran nothing would pass any check.
    assert!(report.iterations > 0);
    let still: Vec<String> = replay_crashes(t.as_mut())
        .into_iter()
        .map(|(p, e)| format!("{}: {e}", p.display()))
        .collect();
    assert!(
        still.is_empty(),
        "{name} crashes that still fail:\n{}",
        still.join("\n")
    );
}

#[test]
fn config_loading() {
    fuzz("config", 20_000);
}

#[test]
fn request_parsing() {
    fuzz("request", 2_000);
}

#[test]
fn upstream_response_parsing() {
    fuzz("response", 2_000);
}

#[test]
fn proxy_protocol_header() {
    fuzz("proxy-protocol", 2_000);
}

#[test]
fn tls_client_hello_peek() {
    fuzz("sni", 2_000);
}

/// The saved findings replayed with the strict checks: each is a fixed bug of the proxy (described
/// in `fuzz/crashes/README.md`) that must stay fixed. A new finding that cannot be fixed at once is
/// saved with its note under "Open" there, and this test is marked `#[ignore]` until it is.
#[test]
fn known_findings_replay_strictly() {
    let mut failures = Vec::new();
    for name in TARGETS {
        let mut t = strict_target(name, cache_dir()).unwrap();
        for (path, what) in replay_crashes(t.as_mut()) {
            failures.push(format!("{}: {what}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
