//! The campaign runner behind `scripts/fuzz.sh`: `sluicegate-fuzz [target|all] [seconds] [seed]`
//! runs each target for that long, prints its rate and what it found, and exits non-zero on a
//! finding (saved under `fuzz/crashes/<target>/`). `sluicegate-fuzz replay` replays every crash;
//! `FUZZ_STRICT=1` adds the checks the proxy does not pass yet.

use sluicegate_fuzz::{Budget, TARGETS, campaign, replay_crashes, root, strict_target, target};
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map_or("all", String::as_str);
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        // A new seed per campaign unless given: long runs explore; the seed is printed to replay.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let cache_dir = std::env::var_os("SLUICEGATE_FUZZ_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../target/fuzz-plugin-cache"));
    let names: Vec<&str> = match which {
        "all" | "replay" => TARGETS.to_vec(),
        name if TARGETS.contains(&name) => vec![name],
        other => {
            eprintln!(
                "unknown target {other}: one of {}, all, replay",
                TARGETS.join(", ")
            );
            std::process::exit(2);
        }
    };
    let mut failed = false;
    println!("| target | seconds | iterations | iterations/s | behaviours | corpus | findings |");
    println!("|---|---|---|---|---|---|---|");
    for name in names {
        // FUZZ_STRICT=1: also the checks the proxy does not pass yet (known findings).
        let make = if std::env::var_os("FUZZ_STRICT").is_some() {
            strict_target
        } else {
            target
        };
        let mut t = make(name, &cache_dir).expect("a known target");
        if which == "replay" {
            for (path, what) in replay_crashes(t.as_mut()) {
                failed = true;
                println!("{name}: {} still fails: {what}", path.display());
            }
            continue;
        }
        let report = campaign(
            t.as_mut(),
            Budget {
                iterations: u64::MAX,
                time: Duration::from_secs(seconds),
                seed,
            },
        );
        println!(
            "| {name} | {:.0} | {} | {:.0} | {} | {} | {} |",
            report.elapsed.as_secs_f64(),
            report.iterations,
            report.rate(),
            report.signatures,
            report.corpus,
            report.findings.len()
        );
        for f in &report.findings {
            failed = true;
            println!(
                "  {name} (seed {seed}): {} -> {}",
                f.what,
                f.saved.display()
            );
        }
    }
    if failed {
        std::process::exit(1);
    }
}
