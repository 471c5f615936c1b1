//! Balancers that pick ahead (`balance.pick-ahead`): first attempts are served from the ids the
//! plugin gave, retries go to `pick`, a pool change drops what is left, and a faulty list is a fault
//! after which the plugin is asked per request.

use crate::plugin_support;

use std::sync::Arc;

use plugin_support::{built, pool, request};
use sluicegate::plugin::{BalancerHandle, NoFacts, PluginError, PluginRuntime, RuntimeOptions};

/// The test plugin with `settings` over endpoints 1, 2, 3. It answers `pick-ahead` with the
/// lowest id and `pick` with the highest.
fn balancer(rt: &PluginRuntime, settings: &str) -> BalancerHandle {
    rt.load_bytes("pick-ahead", &built("tests/plugins/pick-ahead"), "test")
        .unwrap();
    let b = rt
        .balancer("pick-ahead", settings, Arc::new(NoFacts))
        .unwrap();
    b.set_pool(pool(&[1, 2, 3]));
    b
}

fn stats(rt: &PluginRuntime) -> (u64, u64) {
    let p = rt
        .plugins()
        .into_iter()
        .find(|p| p.name == "pick-ahead")
        .unwrap();
    (p.calls, p.faults)
}

#[test]
fn first_attempts_use_the_picks_made_ahead_and_retries_call_pick() {
    let rt = PluginRuntime::new(RuntimeOptions::default()).unwrap();
    let b = balancer(&rt, "");
    let req = request("/", &[]);
    for _ in 0..100 {
        assert_eq!(b.pick(&req, 1, &[]).unwrap(), Some(1));
    }
    // 100 first attempts took two `pick-ahead` calls of 64 ids each.
    assert_eq!(stats(&rt), (2, 0));
    assert_eq!(b.pick(&req, 2, &[1]).unwrap(), Some(3));
    assert_eq!(stats(&rt), (3, 0));
}

#[test]
fn a_pool_change_drops_the_picks_made_for_the_old_pool() {
    let rt = PluginRuntime::new(RuntimeOptions::default()).unwrap();
    let b = balancer(&rt, "");
    let req = request("/", &[]);
    assert_eq!(b.pick(&req, 1, &[]).unwrap(), Some(1));
    b.set_pool(pool(&[2, 3]));
    for _ in 0..3 {
        assert_eq!(b.pick(&req, 1, &[]).unwrap(), Some(2));
    }
}

#[test]
fn an_empty_list_means_pick_per_request() {
    let rt = PluginRuntime::new(RuntimeOptions::default()).unwrap();
    let b = balancer(&rt, r#"ahead = "none""#);
    let req = request("/", &[]);
    for _ in 0..5 {
        assert_eq!(b.pick(&req, 1, &[]).unwrap(), Some(3));
    }
    // Five calls: the first asked `pick-ahead`, which declined, and then `pick`; the others only
    // `pick`. After a pool change `pick-ahead` is asked again (and declines again).
    assert_eq!(stats(&rt), (5, 0));
    b.set_pool(pool(&[1, 2]));
    assert_eq!(b.pick(&req, 1, &[]).unwrap(), Some(2));
    assert_eq!(stats(&rt), (6, 0));
}

#[test]
fn a_faulty_list_is_a_fault_then_pick_answers_until_the_pool_changes() {
    for (settings, reason) in [
        (r#"ahead = "outside""#, "picked endpoint 9999 ahead"),
        (
            r#"ahead = "too-many""#,
            "picked 65 endpoints ahead when asked for 64",
        ),
    ] {
        let rt = PluginRuntime::new(RuntimeOptions::default()).unwrap();
        let b = balancer(&rt, settings);
        let req = request("/", &[]);
        let e = b.pick(&req, 1, &[]).unwrap_err();
        assert!(
            matches!(&e, PluginError::InvalidAnswer { .. }) && e.to_string().contains(reason),
            "{settings}: {e}"
        );
        assert_eq!(stats(&rt).1, 1, "{settings}");
        for _ in 0..3 {
            assert_eq!(b.pick(&req, 1, &[]).unwrap(), Some(3), "{settings}");
        }
        b.set_pool(pool(&[1, 2]));
        assert!(b.pick(&req, 1, &[]).is_err(), "{settings}: asked again");
        assert_eq!(stats(&rt).1, 2, "{settings}");
    }
}
