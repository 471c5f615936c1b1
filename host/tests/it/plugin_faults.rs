//! Misbehaving plugins are contained: each fault comes back as a typed error, is logged with the plugin's name
//! and the reason, and healthy plugins keep answering in between and after.

use crate::common::WAIT;
use crate::plugin_support;

use std::sync::Arc;
use std::time::Duration;

use plugin_support::{built, install, log, pool, request};
use sluicegate::plugin::{BalancerHandle, NoFacts, PluginError, PluginRuntime, RuntimeOptions};

const IDS: [u32; 3] = [1, 2, 3];

/// A runtime with a small memory limit and a call deadline that a loaded test machine does not trip by itself.
fn runtime() -> PluginRuntime {
    PluginRuntime::new(RuntimeOptions {
        call_deadline: Duration::from_millis(150),
        init_deadline: Duration::from_secs(2),
        memory_limit: 16 << 20,
        cache_dir: None,
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

#[test]
fn spin_forever_hits_the_deadline_and_is_contained() {
    let log = log();
    let rt = runtime();
    let ok = healthy(&rt);
    let bad = misbehaving(&rt, "spin-forever", "spin");
    let req = request("/", &[]);
    for round in 1..=2 {
        assert_healthy(&ok);
        let e = bad.pick(&req, 1, &[]).unwrap_err();
        assert!(
            matches!(
                e,
                PluginError::DeadlineExceeded {
                    deadline_ms: 150,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(faults(&rt, "spin-forever"), round);
    }
    assert_healthy(&ok);
    log.wait_for_line(&["spin-forever", "exceeded its deadline of 150 ms"], WAIT);
}

#[test]
fn alloc_forever_exhausts_its_memory_and_is_contained() {
    let log = log();
    let rt = runtime();
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

#[test]
fn a_panicking_pick_is_a_trap_and_is_contained() {
    let log = log();
    let rt = runtime();
    let ok = healthy(&rt);
    let bad = misbehaving(&rt, "panic-pick", "panic");
    for _ in 0..3 {
        let e = bad.pick(&request("/", &[]), 1, &[]).unwrap_err();
        assert!(matches!(e, PluginError::Trap { .. }), "{e}");
        assert_healthy(&ok);
    }
    assert_eq!(faults(&rt, "panic-pick"), 3);
    log.wait_for_line(&["panic-pick", "trapped", "unreachable"], WAIT);
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
