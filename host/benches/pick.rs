//! ns per `pick` through the plugin runtime (embedded round-robin) for pools of 10 and 1,000 endpoints, beside a
//! native round-robin baseline in the same run, then a table of every embedded balancer (loaded by name, default
//! settings) on the same pools, each also with fuel metering off (what counting fuel costs). Run:
//! `cargo bench -p sluicegate --bench pick`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluicegate::plugin::{
    NoFacts, Outcome, PluginRuntime, PoolEndpoint, RequestHead, RuntimeOptions,
};

/// ns per call of `f`: the best of many short batches (each ~1 ms), so batches where another process took the
/// CPU (a busy 2-core machine) do not count.
fn measure(budget: Duration, mut f: impl FnMut()) -> f64 {
    const BATCH: u32 = 2_000;
    for _ in 0..50 * BATCH {
        f();
    }
    let start = Instant::now();
    let mut best = f64::MAX;
    while start.elapsed() < budget {
        let t = Instant::now();
        for _ in 0..BATCH {
            f();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / f64::from(BATCH));
    }
    best
}

fn row(case: &str, ns: f64, native: f64) {
    println!("{case:<40} {ns:>9.1} {:>10.0}", ns / native);
}

fn pool(n: u32) -> Vec<PoolEndpoint> {
    (0..n)
        .map(|i| PoolEndpoint {
            id: i,
            address: format!("10.0.{}.{}:8080", i / 256, i % 256),
            weight: 1,
            healthy: true,
            metadata: vec![("zone".into(), "a".into())],
        })
        .collect()
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500),
    );
    // A generous deadline: on a loaded machine a preempted thread can overrun 10 ms of wall time, and this
    // measures cost, not deadlines.
    let opts = RuntimeOptions {
        call_deadline: Duration::from_secs(1),
        ..RuntimeOptions::default()
    };
    let rt = PluginRuntime::new(opts.clone()).expect("runtime");
    let unmetered = PluginRuntime::new(RuntimeOptions {
        fuel_per_call: 0,
        ..opts
    })
    .expect("runtime without fuel");
    let (parts, ()) = http::Request::builder()
        .uri("http://example.com/api/v1/items?x=1")
        .header("user-agent", "bench")
        .body(())
        .expect("request")
        .into_parts();
    let req = Arc::new(RequestHead {
        parts,
        client: "192.0.2.7:5555".parse().expect("addr"),
        request_id: "b".into(),
    });

    // `BENCH_CALLS=n`: make exactly n picks (pool of 10) and exit, for `perf stat` (cycles per call from two
    // runs with different n do not depend on what else the machine is doing).
    if let Some(n) = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let b = rt
            .balancer("round-robin", "", Arc::new(NoFacts))
            .expect("balancer");
        b.set_pool(pool(10));
        for _ in 0..n {
            black_box(b.pick(black_box(&req), 1, &[]).expect("pick"));
        }
        return;
    }
    println!("{:<40} {:>9} {:>10}", "case", "ns/call", "x native");
    for n in [10u32, 1_000] {
        let ids: Vec<u32> = (0..n).collect();
        let mut next = 0usize;
        let native = measure(budget, || {
            let id = ids[next % ids.len()];
            next = next.wrapping_add(1);
            black_box(id);
        });

        let b = rt
            .balancer("round-robin", "", Arc::new(NoFacts))
            .expect("balancer");
        b.set_pool(pool(n));
        let plugin = measure(budget, || {
            black_box(b.pick(black_box(&req), 1, &[]).expect("pick"));
        });
        let tried = [0u32, 1];
        let retry = measure(budget, || {
            black_box(b.pick(black_box(&req), 3, &tried).expect("pick"));
        });
        // The same retry with fuel metering off: what counting fuel costs a call.
        let unmetered = unmetered
            .balancer("round-robin", "", Arc::new(NoFacts))
            .expect("balancer");
        unmetered.set_pool(pool(n));
        let retry_unmetered = measure(budget, || {
            black_box(unmetered.pick(black_box(&req), 3, &tried).expect("pick"));
        });
        row(&format!("native round-robin, pool {n}"), native, native);
        row(&format!("runtime pick, pool {n}"), plugin, native);
        row(&format!("runtime pick, 2 tried, pool {n}"), retry, native);
        row(
            &format!("  the same, fuel metering off, pool {n}"),
            retry_unmetered,
            native,
        );
    }
    observe_baseline(&rt, budget);
    // By name: other plugins (the baseline's, the table's) may come first in the list.
    let status = rt
        .plugins()
        .into_iter()
        .find(|p| p.name == "round-robin")
        .expect("round-robin is loaded");
    println!(
        "round-robin version {}: {} calls, {} faults, mean {:.1} ns in the call (as counted by the runtime)",
        status.version,
        status.calls,
        status.faults,
        status.call_nanos_total as f64 / status.calls.max(1) as f64
    );
    per_balancer(&rt, &unmetered, &req, budget);
}

/// A bare baseline through the same runtime: `health.observe` of the `all-kinds` test plugin takes a flat record
/// and returns an enum (one entry into wasm, no list to allocate in the guest, no resource), where `pick` needs a
/// guest `realloc` for the `tried` list and a borrowed `request`. Skipped when no wasm toolchain can build it.
fn observe_baseline(rt: &PluginRuntime, budget: Duration) {
    let crate_dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/plugins/all-kinds");
    let built = sluicegate_plugin_build::build_plugin(&crate_dir, None)
        .map_err(|e| e.to_string())
        .and_then(|p| rt.load_file(&p).map_err(|e| e.to_string()));
    if let Err(e) = built {
        println!("(observe baseline skipped: {e})");
        return;
    }
    let name = crate_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let stem = rt
        .plugins()
        .into_iter()
        .find(|p| p.name != "round-robin" && p.name.contains(name));
    let Some(status) = stem else { return };
    let h = rt.health_policy(&status.name, "").expect("health");
    let outcome = Outcome {
        endpoint: 1,
        status: Some(200),
        failure: None,
        duration_micros: 100,
    };
    let ns = measure(budget, || {
        black_box(h.observe(black_box(&outcome)).expect("observe"));
    });
    println!(
        "{:<40} {ns:>9.1}   (one wasm entry + one host import)",
        "runtime health.observe (baseline)"
    );
}

/// Every embedded balancer, with the settings it needs (the defaults otherwise).
const BALANCERS: &[(&str, &str)] = &[
    ("round-robin", ""),
    ("weighted-round-robin", ""),
    ("least-connections", ""),
    ("least-connections", "mode = \"p2c\""),
    ("random", ""),
    ("peak-ewma", ""),
    ("ip-hash", ""),
    ("ring-hash", ""),
    ("maglev", ""),
    ("sticky-session", "secret = \"bench\""),
];

/// ns per first-attempt `pick` of each embedded balancer, loaded by name through `PluginRuntime::balancer`, for
/// pools of 10 and 1,000 endpoints. The pool is set (and any table built) before measuring; the request has no
/// cookie or extra headers, so the hashing balancers hash the client address and sticky-session falls back to its
/// round-robin.
fn per_balancer(
    rt: &PluginRuntime,
    unmetered: &PluginRuntime,
    req: &Arc<RequestHead>,
    budget: Duration,
) {
    println!();
    println!(
        "{:<40} {:>14} {:>16} {:>14} {:>16}",
        "balancer (settings)", "ns/pick, 10", "ns/pick, 1000", "no fuel, 10", "no fuel, 1000"
    );
    for (name, settings) in BALANCERS {
        let mut cells = Vec::new();
        for rt in [rt, unmetered] {
            for n in [10u32, 1_000] {
                let b = rt
                    .balancer(name, settings, Arc::new(NoFacts))
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                b.set_pool(pool(n));
                cells.push(measure(budget, || {
                    black_box(b.pick(black_box(req), 1, &[]).expect("pick"));
                }));
            }
        }
        let label = if settings.is_empty() {
            (*name).to_string()
        } else {
            format!("{name} ({settings})")
        };
        println!(
            "{label:<40} {:>14.1} {:>16.1} {:>14.1} {:>16.1}",
            cells[0], cells[1], cells[2], cells[3]
        );
    }
}
