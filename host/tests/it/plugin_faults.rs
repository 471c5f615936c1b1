//! Misbehaving plugins are contained: each fault comes back as a typed error, is logged with the plugin's name
//! and the reason (at most a line a second), and healthy plugins keep answering in between and after; a
//! use that keeps faulting is switched off by its breaker, and a fresh reload that does is rolled back.

use crate::common::WAIT;
use crate::plugin_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use plugin_support::{built, install, log, pool, request};
use sluicegate::plugin::{
    BalancerHandle, BreakerOptions, BreakerState, NoFacts, PluginError, PluginRuntime,
    RuntimeOptions,
};

const IDS: [u32; 3] = [1, 2, 3];

/// The fuel of one call in these tests: small, so a spinning plugin runs out quickly even in a
/// debug build, and still far more than the healthy round-robin needs.
const FUEL: u64 = 200_000;

/// A runtime with a small memory limit and fuel budget, a call deadline so long that only fuel
/// stops a spinning call, and a breaker that never opens (the breaker tests make their own).
fn runtime() -> PluginRuntime {
    runtime_with(never_open())
}

/// A breaker that never opens.
fn never_open() -> BreakerOptions {
    BreakerOptions {
        faults: u32::MAX,
        min_calls: u64::MAX,
        ..BreakerOptions::default()
    }
}

fn runtime_with(breaker: BreakerOptions) -> PluginRuntime {
    runtime_with_fuel(breaker, FUEL)
}

fn runtime_with_fuel(breaker: BreakerOptions, fuel_per_call: u64) -> PluginRuntime {
    PluginRuntime::new(RuntimeOptions {
        fuel_per_call,
        call_deadline: Duration::from_secs(30),
        init_deadline: Duration::from_secs(30),
        memory_limit: 16 << 20,
        breaker,
        ..RuntimeOptions::default()
    })
    .unwrap()
}

/// The embedded round-robin, as the healthy plugin that must keep answering.
fn healthy(rt: &PluginRuntime) -> BalancerHandle {
    let b = rt.balancer("round-robin", "", Arc::new(NoFacts)).unwrap();
    b.set_pool(pool(&IDS));
    b
}

/// Three picks of a healthy round-robin cover the pool.
fn assert_healthy(b: &BalancerHandle) {
    let req = request("/", &[]);
    let mut picks: Vec<u32> = (0..3)
        .map(|_| b.pick(&req, 1, &[]).unwrap().unwrap())
        .collect();
    picks.sort_unstable();
    assert_eq!(picks, IDS);
}

/// Loads the `faulty-pick` test plugin as `name` and makes a balancer of it over `IDS` whose every
/// pick fails with `fault` (`panic`, `spin` or `alloc`).
fn misbehaving(rt: &PluginRuntime, name: &str, fault: &str) -> BalancerHandle {
    rt.load_bytes(name, &built("tests/plugins/faulty-pick"), "test")
        .unwrap();
    let settings = format!("fault = \"{fault}\"");
    let b = rt.balancer(name, &settings, Arc::new(NoFacts)).unwrap();
    b.set_pool(pool(&IDS));
    b
}

/// The faults counted for `name`: a fault is counted (and logged) in the call that faulted, before
/// it returns, so this is read once after the call.
fn faults(rt: &PluginRuntime, name: &str) -> u64 {
    rt.plugins()
        .into_iter()
        .find(|p| p.name == name)
        .unwrap()
        .faults
}

/// Fuel is counted, not timed: a call that spins runs out of it however idle and fast the
/// machine is (the deadline here is 30 s, so only fuel can stop it).
#[test]
fn spin_forever_runs_out_of_fuel_and_is_contained() {
    let log = log();
    let rt = runtime();
    let ok = healthy(&rt);
    let bad = misbehaving(&rt, "spin-forever", "spin");
    let req = request("/", &[]);
    for round in 1..=2 {
        assert_healthy(&ok);
        let e = bad.pick(&req, 1, &[]).unwrap_err();
        assert!(
            matches!(e, PluginError::FuelExhausted { budget: FUEL, .. }),
            "{e}"
        );
        assert_eq!(faults(&rt, "spin-forever"), round);
    }
    assert_healthy(&ok);
    log.wait_for_line(&["spin-forever", "ran out of fuel"], WAIT);
}

#[test]
fn alloc_forever_exhausts_its_memory_and_is_contained() {
    let log = log();
    // Enough fuel to fill 16 MiB, so the memory limit is what stops it.
    let rt = runtime_with_fuel(never_open(), 100_000_000);
    let ok = healthy(&rt);
    let bad = misbehaving(&rt, "alloc-forever", "alloc");
    assert_healthy(&ok);
    let e = bad.pick(&request("/", &[]), 1, &[]).unwrap_err();
    assert!(
        matches!(e, PluginError::MemoryExhausted { limit_bytes, .. } if limit_bytes == 16 << 20),
        "{e}"
    );
    assert_healthy(&ok);
    // The dropped instance is replaced by a fresh one, which fails the same way: no state leaks across.
    let e = bad.pick(&request("/", &[]), 1, &[]).unwrap_err();
    assert!(matches!(e, PluginError::MemoryExhausted { .. }), "{e}");
    assert_eq!(faults(&rt, "alloc-forever"), 2);
    log.wait_for_line(&["alloc-forever", "exhausted its memory limit"], WAIT);
}

/// A panic is a fault whose one line says where and what: the SDK's panic hook hands the message
/// to the host before the trap.
#[test]
fn a_panicking_pick_is_contained_and_its_message_reaches_the_log() {
    let log = log();
    let rt = runtime();
    let ok = healthy(&rt);
    let bad = misbehaving(&rt, "panic-pick", "panic");
    for _ in 0..3 {
        let e = bad.pick(&request("/", &[]), 1, &[]).unwrap_err();
        assert!(matches!(e, PluginError::Panic { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("panicked at ")
                && text.contains("src/lib.rs:")
                && text.contains("faulty-pick panics in pick, as its settings ask"),
            "{text}"
        );
        assert_healthy(&ok);
    }
    assert_eq!(faults(&rt, "panic-pick"), 3);
    log.wait_for_line(
        &["panic-pick", "plugin fault", "faulty-pick panics in pick"],
        WAIT,
    );
}

/// After N consecutive faults the breaker opens: the plugin is not called (no instance is made
/// either) and answers come back at once; then one probe call per backoff interval.
#[test]
fn the_breaker_opens_after_n_faults_then_calls_at_most_once_per_backoff() {
    let backoff = Duration::from_millis(200);
    let rt = runtime_with(BreakerOptions {
        faults: 3,
        backoff,
        backoff_max: backoff,
        ..BreakerOptions::default()
    });
    let ok = healthy(&rt);
    let bad = misbehaving(&rt, "breaker-pick", "panic");
    let req = request("/", &[]);
    for _ in 0..3 {
        assert!(matches!(
            bad.pick(&req, 1, &[]).unwrap_err(),
            PluginError::Panic { .. }
        ));
    }
    let calls = |rt: &PluginRuntime| {
        let p = rt
            .plugins()
            .into_iter()
            .find(|p| p.name == "breaker-pick")
            .unwrap();
        (p.calls, p.faults, p.trips)
    };
    assert_eq!(calls(&rt), (3, 3, 1));
    assert_eq!(bad.breaker().map(|b| b.state), Some(BreakerState::Open));
    // For at least 1.2 s, pick as fast as possible: refused at once but for the probes.
    let started = Instant::now();
    let mut refused = 0u64;
    while started.elapsed() < Duration::from_millis(1200) {
        match bad.pick(&req, 1, &[]).unwrap_err() {
            PluginError::BreakerOpen { .. } => refused += 1,
            PluginError::Panic { .. } => {}
            e => panic!("{e}"),
        }
    }
    let elapsed = started.elapsed();
    let (made, faulted, trips) = calls(&rt);
    let probes = made - 3;
    let most = elapsed.as_millis() / backoff.as_millis() + 1;
    assert!(
        probes >= 1 && u128::from(probes) <= most,
        "{probes} probe calls in {elapsed:?} with a backoff of {backoff:?}"
    );
    assert_eq!(faulted, made, "every probe faulted");
    assert_eq!(trips, 1, "failed probes do not count as new trips");
    assert!(refused > probes * 10, "{refused} refused, {probes} probes");
    assert_healthy(&ok);
}

/// A plugin faulting on every call writes at most one line a second, with the count left out.
#[test]
fn fault_lines_are_rate_limited_per_plugin() {
    let log = log();
    let rt = runtime();
    let bad = misbehaving(&rt, "noisy-pick", "panic");
    let req = request("/", &[]);
    let started = Instant::now();
    let mut n = 0;
    while n < 300 || started.elapsed() < Duration::from_millis(1100) {
        bad.pick(&req, 1, &[]).unwrap_err();
        n += 1;
    }
    let elapsed = started.elapsed().as_secs() + 1;
    let lines = log
        .text()
        .lines()
        .filter(|l| l.contains("noisy-pick") && l.contains("plugin fault"))
        .count() as u64;
    assert!(
        (1..=elapsed + 1).contains(&lines),
        "{lines} fault lines for {n} faults in {elapsed} s"
    );
    log.wait_for_line(&["noisy-pick", "plugin fault", "suppressed="], WAIT);
}

/// A version whose breaker opens soon after a hot reload is replaced by the version before it,
/// `/status` says so, and the same bytes are refused until the file changes.
#[test]
fn a_new_version_that_trips_its_breaker_is_rolled_back() {
    let log = log();
    let rt = runtime_with(BreakerOptions::default());
    let good = built("tests/plugins/pick-first");
    let bad = built("tests/plugins/faulty-pick");
    rt.load_bytes("rollback-pick", &good, "test").unwrap();
    let good_version = rt
        .plugins()
        .into_iter()
        .find(|p| p.name == "rollback-pick")
        .unwrap()
        .version;
    // pick-first ignores its settings; faulty-pick panics as they ask.
    let b = rt
        .balancer("rollback-pick", "fault = \"panic\"", Arc::new(NoFacts))
        .unwrap();
    b.set_pool(pool(&IDS));
    let req = request("/", &[]);
    assert_eq!(b.pick(&req, 1, &[]).unwrap(), Some(1));
    let loaded = rt.load_bytes("rollback-pick", &bad, "test").unwrap();
    for _ in 0..5 {
        b.pick(&req, 1, &[]).unwrap_err();
    }
    let status = crate::common::wait_for_sync(
        "the rollback",
        WAIT,
        || {
            rt.plugins()
                .into_iter()
                .find(|p| p.name == "rollback-pick")
                .unwrap()
        },
        |p| p.version == good_version,
    );
    let from = status.rolled_back_from.expect("rolled_back_from");
    assert_eq!(from.version, loaded.version);
    assert!(from.fault.contains("panicked at"), "{}", from.fault);
    assert_eq!(status.rollbacks, 1);
    assert!(
        status
            .previous_versions
            .iter()
            .any(|v| v.version == loaded.version && v.rolled_back && v.faults == 5),
        "{:?}",
        status.previous_versions
    );
    assert_eq!(
        b.pick(&req, 1, &[]).unwrap(),
        Some(1),
        "the good version serves"
    );
    log.wait_for_line(&["rollback-pick", "rolled back to version"], WAIT);
    // The same bytes again are refused; other bytes load.
    let e = rt.load_bytes("rollback-pick", &bad, "test").unwrap_err();
    assert!(matches!(e, PluginError::RolledBack { .. }), "{e}");
    assert!(
        rt.refused().iter().any(|r| r.name == "rollback-pick"),
        "{:?}",
        rt.refused()
    );
    rt.load_bytes("rollback-pick", &built("tests/plugins/pick-last"), "test")
        .unwrap();
    assert_eq!(b.pick(&req, 1, &[]).unwrap(), Some(3));
    assert!(rt.refused().iter().all(|r| r.name != "rollback-pick"));
}

#[test]
fn a_router_used_as_a_balancer_is_the_wrong_world() {
    let log = log();
    let rt = runtime();
    let ok = healthy(&rt);
    rt.load_bytes("only-router", &built("tests/plugins/only-router"), "test")
        .unwrap();
    let e = rt
        .balancer("only-router", "", Arc::new(NoFacts))
        .unwrap_err();
    assert!(
        matches!(
            e,
            PluginError::WrongWorld {
                interface: "balance",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("only-router"), "{e}");
    assert_healthy(&ok);
    // It still serves as what it is.
    assert!(rt.router("only-router", "", &["default".into()]).is_ok());
    log.wait_for_line(
        &["only-router", "does not export `sluicegate:plugin/balance`"],
        WAIT,
    );
}

#[test]
fn a_plugin_built_against_another_wit_version_is_refused_naming_both() {
    let rt = runtime();
    // The round-robin default as it was built against sluicegate:plugin@0.1.0.
    let old = include_bytes!("../fixtures/round-robin-wit-0.1.0.wasm");
    let e = rt
        .load_bytes("old-rr", old, "test")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("old-rr")
            && e.contains("built against sluicegate:plugin@0.1.0")
            && e.contains(sluicegate::plugin::WIT_PACKAGE)
            && e.contains("rebuild"),
        "{e}"
    );
    assert!(rt.balancer("old-rr", "", Arc::new(NoFacts)).is_err());
    // Everything else keeps serving.
    assert_healthy(&healthy(&rt));
}

#[test]
fn non_wasm_files_in_the_watched_dir_are_refused_with_a_reason() {
    let log = log();
    let rt = runtime();
    let ok = healthy(&rt);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("junk-at-start.wasm"),
        "#!/bin/sh\necho not wasm\n",
    )
    .unwrap();
    let (_watcher, errors) = rt.watch_dir(dir.path()).unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        matches!(&errors[0], PluginError::NotWasm { name, .. } if name == "junk-at-start"),
        "{}",
        errors[0]
    );
    assert_healthy(&ok);
    install(
        &dir.path().join("junk-later.wasm"),
        b"<html>not a plugin</html>",
    );
    let line = log.wait_for_line(&["junk-later", "refused"], WAIT);
    assert!(line.contains("not a WebAssembly file"), "{line}");
    assert!(rt.plugins().iter().all(|p| !p.name.starts_with("junk")));
    assert_healthy(&ok);
}

#[test]
fn refused_settings_fail_the_use_and_a_reload_that_refuses_live_settings_is_rolled_back() {
    let log = log();
    let rt = runtime();
    let ok = healthy(&rt);
    rt.load_bytes("refuse-init", &built("tests/plugins/refuse-init"), "test")
        .unwrap();
    let e = rt
        .balancer("refuse-init", "mode = \"bad\"", Arc::new(NoFacts))
        .unwrap_err();
    match &e {
        PluginError::InitRefused { name, message, .. } => {
            assert_eq!(name, "refuse-init");
            assert!(
                message.contains("refuses settings containing `bad`"),
                "{message}"
            );
        }
        other => panic!("expected InitRefused, got {other}"),
    }
    assert!(
        rt.balancer("refuse-init", "mode = \"good\"", Arc::new(NoFacts))
            .is_ok()
    );
    assert_healthy(&ok);

    // A live use of `lb` (pick-first) has settings that refuse-init refuses: loading refuse-init as `lb` must
    // fail and leave pick-first serving.
    let first = built("tests/plugins/pick-first");
    let v1 = rt.load_bytes("lb", &first, "test").unwrap().version;
    let lb = rt
        .balancer("lb", "mode = \"bad\"", Arc::new(NoFacts))
        .unwrap();
    lb.set_pool(pool(&[7, 8, 9]));
    let req = request("/", &[]);
    assert_eq!(lb.pick(&req, 1, &[]).unwrap(), Some(7));
    let e = rt
        .load_bytes("lb", &built("tests/plugins/refuse-init"), "test")
        .unwrap_err();
    assert!(matches!(e, PluginError::InitRefused { .. }), "{e}");
    assert_eq!(
        rt.plugins()
            .into_iter()
            .find(|p| p.name == "lb")
            .unwrap()
            .version,
        v1
    );
    assert_eq!(lb.pick(&req, 1, &[]).unwrap(), Some(7));
    assert_healthy(&ok);
    log.wait_for_line(
        &[
            "lb",
            "refused",
            "keeping",
            "refuses settings containing `bad`",
        ],
        WAIT,
    );
}
