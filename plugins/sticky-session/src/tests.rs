//! Unit tests through the SDK harness, driving both halves as the proxy would: pick, answer,
//! response filter, next request with the cookie the client got.

use sluicegate_sdk::HeaderOp;
use sluicegate_sdk::testing::{
    self, BalancerHarness, FilterHarness, TestPool, TestRequest, TestResponse,
};

use crate::{Settings, StickyBalancer, StickyFilter};

const SETTINGS: &str = "secret = \"s3cret\"\n";

fn pool_of(n: usize) -> TestPool {
    (0..n).fold(TestPool::new(), |pool, i| {
        pool.endpoint(&format!("10.0.0.{}:80", i + 1), 1)
    })
}

fn balancer(settings: &str, pool: &TestPool) -> BalancerHarness<StickyBalancer> {
    BalancerHarness::start(settings, pool).unwrap_or_else(|e| panic!("refused: {e}"))
}

fn filter(settings: &str) -> FilterHarness<StickyFilter> {
    FilterHarness::init(settings).unwrap_or_else(|e| panic!("refused: {e}"))
}

/// The cookie value a filter answer sets, if it sets one.
fn set_value(ops: &[HeaderOp], cookie: &str) -> Option<String> {
    match ops {
        [] => None,
        [HeaderOp::Append(name, value)] if name == "set-cookie" => {
            let pair = value.split(';').next().unwrap();
            let (n, v) = pair.split_once('=').unwrap();
            assert_eq!(n, cookie, "{value}");
            Some(v.to_owned())
        }
        other => panic!("unexpected ops {other:?}"),
    }
}

/// One request through both halves as the proxy runs them; returns who served it and the
/// cookie value the response set, if any.
fn serve(
    lb: &mut BalancerHarness<StickyBalancer>,
    f: &mut FilterHarness<StickyFilter>,
    req: &TestRequest,
) -> (u32, Option<String>) {
    let id = lb.pick(req).expect("an endpoint");
    let resp = TestResponse::new(200).endpoint(id).cluster("web");
    (id, set_value(&f.on_response(req, &resp), "sg_sticky"))
}

fn with_cookie(value: &str) -> TestRequest {
    TestRequest::get("/").cookie("sg_sticky", value)
}

#[test]
fn readme_example_is_accepted() {
    let readme = include_str!("../README.md");
    let start = readme.find("```toml\n").expect("README has a toml example") + 8;
    let len = readme[start..].find("```").expect("closed block");
    let settings = Settings::parse(&readme[start..start + len]).unwrap();
    assert_eq!(settings.cluster.as_deref(), Some("web"));
    assert_eq!(
        settings.attributes,
        "; Path=/; Domain=example.com; Max-Age=3600; HttpOnly; SameSite=Lax"
    );
}

#[test]
fn first_response_sets_the_cookie_and_later_requests_stick() {
    let pool = pool_of(4);
    let mut lb = balancer(SETTINGS, &pool);
    let mut f = filter(SETTINGS);
    let (first, value) = serve(&mut lb, &mut f, &TestRequest::get("/"));
    let value = value.expect("the first response pins the client");
    assert_eq!(value, lb.plugin().cookie_value(first));
    for _ in 0..20 {
        // Round-robin would move on; the cookie keeps the client where it was, and the
        // response sets nothing new.
        assert_eq!(serve(&mut lb, &mut f, &with_cookie(&value)), (first, None));
    }
    // Clients without the cookie are still spread.
    let others: std::collections::BTreeSet<u32> = (0..8)
        .map(|_| serve(&mut lb, &mut f, &TestRequest::get("/")).0)
        .collect();
    assert_eq!(others.len(), 4);
}

#[test]
fn each_endpoint_has_its_own_opaque_value() {
    let pool = pool_of(5);
    let lb = balancer(SETTINGS, &pool);
    let values: Vec<String> = (0..5).map(|id| lb.plugin().cookie_value(id)).collect();
    for (id, v) in values.iter().enumerate() {
        assert_eq!(v.len(), 16, "{v}");
        assert!(v.bytes().all(|b| b.is_ascii_hexdigit()), "{v}");
        assert!(!v.contains("10.0.0") && v != &id.to_string(), "{v}");
        assert_eq!(values.iter().filter(|w| *w == v).count(), 1, "{values:?}");
    }
    // Each value leads back to its endpoint.
    let mut lb = lb;
    for (id, v) in values.iter().enumerate() {
        assert_eq!(lb.pick(&with_cookie(v)), Some(id as u32));
    }
}

#[test]
fn pinned_endpoint_unhealthy_repins_to_another_with_a_new_cookie() {
    let mut pool = pool_of(3);
    let mut lb = balancer(SETTINGS, &pool);
    let mut f = filter(SETTINGS);
    let (pinned, value) = serve(&mut lb, &mut f, &TestRequest::get("/"));
    let value = value.unwrap();

    pool.set_healthy(pinned, false);
    lb.set_pool(&pool);
    let (moved, new_value) = serve(&mut lb, &mut f, &with_cookie(&value));
    assert_ne!(moved, pinned);
    let new_value = new_value.expect("the new endpoint re-pins the client");
    assert_ne!(new_value, value);
    assert_eq!(testing::counter("sticky_repin"), 1);
    // The new cookie sticks to the new endpoint.
    for _ in 0..5 {
        assert_eq!(
            serve(&mut lb, &mut f, &with_cookie(&new_value)),
            (moved, None)
        );
    }
    // Back to health: a client still holding the old cookie goes back to its endpoint.
    pool.set_healthy(pinned, true);
    lb.set_pool(&pool);
    assert_eq!(serve(&mut lb, &mut f, &with_cookie(&value)), (pinned, None));
}

#[test]
fn removed_endpoint_or_garbage_cookie_falls_back_and_repins() {
    let mut pool = pool_of(3);
    let mut lb = balancer(SETTINGS, &pool);
    let mut f = filter(SETTINGS);
    let gone = lb.plugin().cookie_value(2);
    pool.remove(2);
    lb.set_pool(&pool);
    for value in [gone.as_str(), "not-a-value", ""] {
        let (id, set) = serve(&mut lb, &mut f, &with_cookie(value));
        assert!(id < 2);
        assert_eq!(set, Some(lb.plugin().cookie_value(id)));
    }
    assert_eq!(testing::counter("sticky_repin"), 3);
}

#[test]
fn tried_pinned_endpoint_is_avoided_on_retry() {
    let pool = pool_of(3);
    let mut lb = balancer(SETTINGS, &pool);
    let mut f = filter(SETTINGS);
    let value = lb.plugin().cookie_value(1);
    let req = with_cookie(&value);
    assert_eq!(lb.pick(&req), Some(1));
    // Endpoint 1 failed this request: the retry goes elsewhere, never to a tried endpoint.
    for _ in 0..10 {
        let retry = lb.pick_retry(&req, 2, &[1]).unwrap();
        assert_ne!(retry, 1);
        let third = lb.pick_retry(&req, 3, &[1, retry]).unwrap();
        assert!(third != 1 && third != retry);
    }
    // The endpoint that finally answered re-pins the client.
    let resp = TestResponse::new(200).endpoint(2).cluster("web");
    assert_eq!(
        set_value(&f.on_response(&req, &resp), "sg_sticky"),
        Some(lb.plugin().cookie_value(2))
    );
    // Every endpoint tried: a pick is still made (the proxy decides whether to retry).
    assert!(lb.pick_retry(&req, 4, &[0, 1, 2]).is_some());
}

#[test]
fn two_instances_with_the_same_settings_agree() {
    let pool = pool_of(4);
    let mut lb_a = balancer(SETTINGS, &pool);
    let mut lb_b = balancer(SETTINGS, &pool);
    let mut f_a = filter(SETTINGS);
    let mut f_b = filter(SETTINGS);
    for id in 0..4 {
        let resp = TestResponse::new(200).endpoint(id);
        let from_a = set_value(&f_a.on_response(&TestRequest::get("/"), &resp), "sg_sticky");
        let from_b = set_value(&f_b.on_response(&TestRequest::get("/"), &resp), "sg_sticky");
        assert_eq!(from_a, from_b);
        // A cookie set by proxy A is followed by proxy B's balancer, and B sets nothing new.
        let value = from_a.unwrap();
        assert_eq!(lb_b.pick(&with_cookie(&value)), Some(id));
        assert_eq!(lb_a.pick(&with_cookie(&value)), Some(id));
        assert_eq!(f_b.on_response(&with_cookie(&value), &resp), []);
    }
    // Another secret gives other values, which this proxy does not follow.
    let other = balancer("secret = \"other\"\n", &pool);
    assert_ne!(
        other.plugin().cookie_value(0),
        lb_a.plugin().cookie_value(0)
    );
}

#[test]
fn cookie_attributes_defaults_and_all_set() {
    let mut f = filter(SETTINGS);
    let ops = f.on_response(&TestRequest::get("/"), &TestResponse::new(200).endpoint(0));
    let HeaderOp::Append(name, value) = &ops[0] else {
        panic!("{ops:?}")
    };
    assert_eq!(name, "set-cookie");
    let expected_value = Settings::parse(SETTINGS).unwrap().cookie_value(0);
    assert_eq!(
        *value,
        format!("sg_sticky={expected_value}; Path=/; HttpOnly; SameSite=Lax")
    );

    let all = "secret = \"k\"\ncookie = \"lb\"\npath = \"/app\"\ndomain = \"example.com\"\n\
               max_age = 600\nsecure = true\nhttp_only = false\nsame_site = \"None\"\n";
    let mut f = filter(all);
    let ops = f.on_response(&TestRequest::get("/"), &TestResponse::new(200).endpoint(3));
    let v = Settings::parse(all).unwrap().cookie_value(3);
    assert_eq!(
        ops,
        [HeaderOp::append(
            "set-cookie",
            format!("lb={v}; Path=/app; Domain=example.com; Max-Age=600; Secure; SameSite=None")
        )]
    );
    let mut strict = filter("secret = \"k\"\nsame_site = \"strict\"\n");
    let ops = strict.on_response(&TestRequest::get("/"), &TestResponse::new(200).endpoint(0));
    let [HeaderOp::Append(_, strict)] = &ops[..] else {
        panic!("{ops:?}")
    };
    assert!(
        strict.ends_with("; Path=/; HttpOnly; SameSite=Strict"),
        "{strict}"
    );
}

#[test]
fn local_answers_and_other_clusters_are_left_alone() {
    let mut f = filter("secret = \"k\"\ncluster = \"web\"\n");
    let req = TestRequest::get("/");
    assert_eq!(f.on_response(&req, &TestResponse::new(404)), []);
    assert_eq!(
        f.on_response(&req, &TestResponse::new(200).endpoint(1).cluster("api")),
        []
    );
    assert_eq!(f.on_response(&req, &TestResponse::new(200).endpoint(1)), []);
    let ops = f.on_response(&req, &TestResponse::new(200).endpoint(1).cluster("web"));
    assert_eq!(ops.len(), 1);
    // Without a cluster setting, any endpoint's answer pins.
    let mut any = filter("secret = \"k\"\n");
    assert_eq!(
        any.on_response(&req, &TestResponse::new(200).endpoint(1).cluster("api"))
            .len(),
        1
    );
    // The cluster is part of the value: the same endpoint id in two clusters gets two values.
    let web = Settings::parse("secret = \"k\"\ncluster = \"web\"\n").unwrap();
    let api = Settings::parse("secret = \"k\"\ncluster = \"api\"\n").unwrap();
    assert_ne!(web.cookie_value(1), api.cookie_value(1));
}

#[test]
fn no_healthy_endpoint_gives_none_whatever_the_cookie() {
    let pools = [
        ("one", pool_of(1)),
        ("three", pool_of(3)),
        (
            "weighted",
            TestPool::new()
                .endpoint("10.0.1.1:80", 1)
                .endpoint("10.0.1.2:80", 5),
        ),
        ("empty", TestPool::new()),
    ];
    for settings in [
        SETTINGS,
        "secret = \"k\"\ncookie = \"lb\"\ncluster = \"web\"\n",
    ] {
        let cookie = Settings::parse(settings).unwrap().cookie;
        for (name, healthy) in &pools {
            let mut pool = healthy.clone();
            let ids: Vec<u32> = pool.endpoints().iter().map(|e| e.id).collect();
            for id in &ids {
                pool.set_healthy(*id, false);
            }
            let case = format!("{settings:?}, {name}");
            // A fresh instance, and one that served the same endpoints healthy first.
            let fresh = balancer(settings, &pool);
            let mut was_healthy = balancer(settings, healthy);
            was_healthy.spread(&TestRequest::get("/"), 4);
            was_healthy.set_pool(&pool);
            // No cookie, a cookie pinning each endpoint (now unhealthy), and a stale one.
            let mut requests = vec![TestRequest::get("/")];
            for id in ids.iter().copied().chain([7]) {
                let value = fresh.plugin().cookie_value(id);
                requests.push(TestRequest::get("/").cookie(&cookie, &value));
            }
            requests.push(TestRequest::get("/").cookie(&cookie, "garbage"));
            for mut lb in [fresh, was_healthy] {
                for req in &requests {
                    assert_eq!(lb.pick(req), None, "{case}: first try");
                    let first = &ids[..ids.len().min(1)];
                    assert_eq!(lb.pick_retry(req, 2, first), None, "{case}");
                    assert_eq!(lb.pick_retry(req, 3, &ids), None, "{case}: all tried");
                }
            }
        }
    }
}

#[test]
fn a_cookie_pinning_an_unhealthy_endpoint_moves_to_a_healthy_one_only() {
    let mut pool = pool_of(3);
    pool.set_healthy(0, false);
    pool.set_healthy(2, false);
    let mut lb = balancer(SETTINGS, &pool);
    let pinned = with_cookie(&lb.plugin().cookie_value(2));
    for _ in 0..5 {
        assert_eq!(lb.pick(&pinned), Some(1));
    }
    // The healthy one was tried already: it is still the only answer, never the pinned one.
    assert_eq!(lb.pick_retry(&pinned, 2, &[1]), Some(1));
    assert_eq!(lb.pick_retry(&pinned, 3, &[1, 2]), Some(1));
}

#[test]
fn proxy_panic_mode_marks_all_healthy_and_the_cookie_is_followed() {
    // The proxy's panic mode (below `panic_threshold`) sends every endpoint as healthy, even
    // those its checks count as down: the balancer then follows cookies to any of them.
    let pool = pool_of(3);
    let mut lb = balancer(SETTINGS, &pool);
    let value = lb.plugin().cookie_value(2);
    for _ in 0..5 {
        assert_eq!(lb.pick(&with_cookie(&value)), Some(2));
    }
    assert_eq!(lb.spread(&TestRequest::get("/"), 9).len(), 3);
    let mut empty = balancer(SETTINGS, &TestPool::new());
    assert_eq!(empty.pick(&with_cookie(&value)), None);
}

#[test]
fn bad_settings_are_refused_naming_the_key() {
    let cases = [
        ("", "secret"),
        ("secret = \"\"\n", "secret: must not be empty"),
        (
            "secret = \"k\"\ncookie = \"a b\"\n",
            "cookie: \"a b\" is not a cookie name",
        ),
        ("secret = \"k\"\ncookie = \"\"\n", "cookie:"),
        (
            "secret = \"k\"\npath = \"app\"\n",
            "path: \"app\" must start with `/`",
        ),
        ("secret = \"k\"\npath = \"/a;Domain=evil\"\n", "path:"),
        ("secret = \"k\"\ndomain = \"a b\"\n", "domain:"),
        ("secret = \"k\"\nmax_age = 0\n", "max_age: 0"),
        ("secret = \"k\"\nmax_age = -5\n", "line 2"),
        (
            "secret = \"k\"\nsame_site = \"loose\"\n",
            "same_site: \"loose\"",
        ),
        (
            "secret = \"k\"\nsame_site = \"none\"\n",
            "same_site: \"none\" needs secure = true",
        ),
        (
            "secret = \"k\"\ncluster = \"\"\n",
            "cluster: empty cluster name",
        ),
        ("secret = \"k\"\ncookie_name = \"x\"\n", "cookie_name"),
    ];
    for (settings, expected) in cases {
        let from_balancer = BalancerHarness::<StickyBalancer>::init(settings).unwrap_err();
        let from_filter = FilterHarness::<StickyFilter>::init(settings).unwrap_err();
        assert_eq!(from_balancer, from_filter);
        assert!(
            from_filter.contains(expected),
            "settings:\n{settings}\nerror: {from_filter}\nexpected: {expected}"
        );
    }
}
