//! The build command: a plugin crate (the `examples/header-hash` example) built by `build_plugin` loads and
//! answers picks; crates that cannot be plugins are refused with a reason.

use crate::plugin_support;

use std::collections::HashSet;
use std::sync::Arc;

use plugin_support::{built, pool, repo_root, request};
use sluicegate::plugin::{Kind, NoFacts, PluginRuntime, RuntimeOptions};
use sluicegate_plugin_build::build_plugin;

#[test]
fn header_hash_example_builds_loads_and_answers_picks() {
    let bytes = built("examples/header-hash");
    assert_eq!(
        &bytes[..8],
        b"\0asm\x0d\0\x01\0",
        "the build output is a component"
    );
    let rt = PluginRuntime::new(RuntimeOptions::default()).unwrap();
    let status = rt.load_bytes("header-hash", &bytes, "test").unwrap();
    assert_eq!(status.kinds, vec![Kind::Balancer]);
    assert!(
        rt.balancer("header-hash", "", Arc::new(NoFacts)).is_err(),
        "`header` is required"
    );
    let b = rt
        .balancer("header-hash", "header = \"x-user\"", Arc::new(NoFacts))
        .unwrap();
    let ids: Vec<u32> = (1..=8).collect();
    b.set_pool(pool(&ids));

    let mut chosen = HashSet::new();
    for user in 0..40 {
        let user = format!("user-{user}");
        let req = request("/", &[("X-User", &user)]);
        let first = b.pick(&req, 1, &[]).unwrap().unwrap();
        assert!(ids.contains(&first));
        for _ in 0..3 {
            assert_eq!(b.pick(&req, 1, &[]).unwrap(), Some(first), "{user} moved");
        }
        let retry = b.pick(&req, 2, &[first]).unwrap().unwrap();
        assert_ne!(retry, first, "a retry skips the endpoint tried");
        chosen.insert(first);
    }
    assert!(chosen.len() >= 4, "40 users landed on only {chosen:?}");
}

#[test]
fn a_directory_without_a_crate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = build_plugin(dir.path(), None).unwrap_err();
    assert!(e.to_string().starts_with("plugin build of"), "{e}");
    assert!(e.to_string().contains("no Cargo.toml"), "{e}");
}

#[test]
fn a_crate_that_is_not_a_plugin_is_refused() {
    // The SDK is a library, not a cdylib exporting a decision interface.
    let e = build_plugin(&repo_root().join("sdk"), None).unwrap_err();
    assert!(e.to_string().contains("cdylib"), "{e}");
}

#[test]
fn the_build_writes_where_asked() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("nested").join("hh.wasm");
    let written = build_plugin(&repo_root().join("examples/header-hash"), Some(&out)).unwrap();
    assert_eq!(written, out);
    assert_eq!(std::fs::read(&out).unwrap(), built("examples/header-hash"));
}
