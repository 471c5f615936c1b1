//! Hot reload under load, and the disk cache of compiled plugins.

use crate::common::WAIT;
use crate::plugin_support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plugin_support::{built, install, log, pool, request, version_of, wait_for_version};
use sluicegate::plugin::{NoFacts, PluginRuntime, RuntimeOptions};

/// Endpoints of the test pool: pick-first answers the first, pick-last the last.
const IDS: [u32; 5] = [11, 12, 13, 14, 15];
const FIRST: u32 = 11;
const LAST: u32 = 15;

#[test]
fn fifty_swaps_under_load_lose_no_call_and_end_on_the_new_version() {
    let _log = log();
    let first = built("tests/plugins/pick-first");
    let last = built("tests/plugins/pick-last");
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    // A deadline no healthy call overruns even when the busy test machine preempts a worker for a while: this
    // test is about swaps, and a deadline fault would (rightly) count as a failed call.
    let rt = PluginRuntime::new(RuntimeOptions {
        call_deadline: Duration::from_secs(2),
        cache_dir: Some(cache.path().to_owned()),
        ..Default::default()
    })
    .unwrap();
    let file = dir.path().join("hot.wasm");
    install(&file, &first);
    let (_watcher, errors) = rt.watch_dir(dir.path()).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let balancer = rt.balancer("hot", "", Arc::new(NoFacts)).unwrap();
    balancer.set_pool(pool(&IDS));

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (b, stop, calls) = (balancer.clone(), stop.clone(), calls.clone());
        tasks.push(tokio.spawn(async move {
            let req = request("/", &[]);
            let mut seen = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                let picked = b.pick(&req, 1, &[]).map_err(|e| e.to_string())?;
                match picked {
                    Some(id @ (FIRST | LAST)) => {
                        seen.insert(id);
                    }
                    other => return Err(format!("answer {other:?} is neither version's")),
                }
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            Ok::<_, String>(seen)
        }));
    }

    for swap in 0..50 {
        let bytes = if swap % 2 == 0 { &last } else { &first };
        let before = calls.load(Ordering::Relaxed);
        install(&file, bytes);
        wait_for_version(&rt, "hot", &version_of(bytes), WAIT);
        // Let the callers run on the new version for a moment before the next swap (bounded: a caller that
        // failed has stopped calling, which the checks below report).
        let waiting = std::time::Instant::now();
        while calls.load(Ordering::Relaxed) < before + 50 && waiting.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(1));
        }
        if tasks.iter().any(|t| t.is_finished()) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut answers = HashSet::new();
    for t in tasks {
        match tokio.block_on(t).unwrap() {
            Ok(seen) => answers.extend(seen),
            Err(e) => panic!("a call failed during the swaps: {e}"),
        }
    }
    assert_eq!(
        answers,
        HashSet::from([FIRST, LAST]),
        "both versions answered during the swaps"
    );
    // The last swap installed `first` (swap 49 is odd): from now on only it answers, on every worker.
    let status = rt.plugins().into_iter().find(|p| p.name == "hot").unwrap();
    assert_eq!(status.version, version_of(&first));
    assert_eq!(status.faults, 0);
    let after = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..48)
        .map(|_| {
            let (b, after) = (balancer.clone(), after.clone());
            tokio.spawn(async move {
                let req = request("/", &[]);
                for _ in 0..20 {
                    let id = b.pick(&req, 1, &[]).unwrap();
                    after
                        .lock()
                        .unwrap()
                        .push((std::thread::current().id(), id));
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for t in tasks {
        tokio.block_on(t).unwrap();
    }
    let after = after.lock().unwrap();
    assert!(
        after.iter().all(|(_, id)| *id == Some(FIRST)),
        "an old version answered after the last swap"
    );
    let threads: HashSet<_> = after.iter().map(|(t, _)| *t).collect();
    assert!(
        threads.len() >= 2,
        "calls ran on {} worker thread(s) only",
        threads.len()
    );
    assert!(calls.load(Ordering::Relaxed) >= 50 * 50);
}

#[test]
fn a_second_runtime_loads_from_the_disk_cache() {
    let log = log();
    let bytes = built("tests/plugins/pick-last");
    let cache = tempfile::tempdir().unwrap();
    let opts = RuntimeOptions {
        cache_dir: Some(cache.path().to_owned()),
        ..Default::default()
    };

    let cold = PluginRuntime::new(opts.clone()).unwrap();
    let status = cold.load_bytes("cached-last", &bytes, "test").unwrap();
    assert!(!status.cache_hit, "nothing was cached yet");
    drop(cold);
    let cached: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        cached.iter().any(|p| p
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&version_of(&bytes))),
        "{cached:?}"
    );

    let warm = PluginRuntime::new(opts).unwrap();
    let status = warm.load_bytes("cached-last", &bytes, "test").unwrap();
    assert!(status.cache_hit, "the second runtime compiled again");
    log.wait_for_line(&["cached-last", "cache_hit=true"], WAIT);
    let b = warm.balancer("cached-last", "", Arc::new(NoFacts)).unwrap();
    b.set_pool(pool(&IDS));
    assert_eq!(b.pick(&request("/", &[]), 1, &[]).unwrap(), Some(LAST));
}

#[test]
fn a_deleted_plugin_file_keeps_its_last_good_version_serving() {
    let log = log();
    let bytes = built("tests/plugins/pick-first");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("doomed.wasm");
    install(&file, &bytes);
    let rt = PluginRuntime::new(RuntimeOptions::default()).unwrap();
    let (_watcher, errors) = rt.watch_dir(dir.path()).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let b = rt.balancer("doomed", "", Arc::new(NoFacts)).unwrap();
    b.set_pool(pool(&IDS));
    std::fs::remove_file(&file).unwrap();
    let line = log.wait_for_line(&["doomed.wasm", "removed"], WAIT);
    assert!(line.contains("WARN"), "{line}");
    assert_eq!(b.pick(&request("/", &[]), 1, &[]).unwrap(), Some(FIRST));
    assert_eq!(
        rt.plugins()
            .into_iter()
            .find(|p| p.name == "doomed")
            .unwrap()
            .version,
        version_of(&bytes)
    );
}
