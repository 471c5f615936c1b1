//! Unit tests through the SDK harness: each condition, each action, splits, settings refusals.

use std::collections::BTreeMap;

use sluicegate_sdk::testing::{self, RouterHarness, TestRequest};
use sluicegate_sdk::{LocalResponse, RouteDecision};

use crate::RuleRouter;

/// The proxy's clusters in these tests: every name the settings below use.
const CLUSTERS: &[&str] = &[
    "a",
    "b",
    "c",
    "api",
    "web",
    "users",
    "one",
    "two",
    "three",
    "sub",
    "read",
    "php",
    "off",
    "fallback",
    "canary",
    "beta",
    "authed",
    "auth",
    // The README's example.
    "static",
    "app",
    "app-next",
    "users-beta",
];

fn router(settings: &str) -> RouterHarness<RuleRouter> {
    RouterHarness::<RuleRouter>::init(settings, CLUSTERS).unwrap_or_else(|e| panic!("refused: {e}"))
}

fn refused(settings: &str) -> String {
    match RouterHarness::<RuleRouter>::init(settings, CLUSTERS) {
        Ok(_) => panic!("accepted: {settings}"),
        Err(e) => e,
    }
}

fn cluster(d: RouteDecision) -> String {
    match d {
        RouteDecision::Cluster(c) => c,
        RouteDecision::Respond(r) => panic!("expected a cluster, got a local {} answer", r.status),
        RouteDecision::ClusterIndex(i) => panic!("the harness shows clusters by name, got {i}"),
    }
}

fn answer(d: RouteDecision) -> LocalResponse {
    match d {
        RouteDecision::Respond(r) => r,
        RouteDecision::Cluster(c) => panic!("expected a local answer, got cluster {c}"),
        RouteDecision::ClusterIndex(i) => panic!("expected a local answer, got cluster {i}"),
    }
}

fn header<'a>(r: &'a LocalResponse, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Routes `req` and returns the cluster name, or `local <status>` for a local answer.
fn goes(r: &mut RouterHarness<RuleRouter>, req: &TestRequest) -> String {
    match r.route(req) {
        RouteDecision::Cluster(c) => c,
        RouteDecision::Respond(resp) => format!("local {}", resp.status),
        RouteDecision::ClusterIndex(i) => panic!("the harness shows clusters by name, got {i}"),
    }
}

#[test]
fn readme_example_is_accepted_and_routes() {
    let readme = include_str!("../README.md");
    let start = readme.find("```toml\n").expect("README has a toml example") + 8;
    let len = readme[start..].find("```").expect("closed block");
    let mut r = router(&readme[start..start + len]);
    assert_eq!(r.plugin().rule_count(), 6);
    assert_eq!(
        goes(&mut r, &TestRequest::get("/").host("api.example.com")),
        "api"
    );
    assert_eq!(
        goes(
            &mut r,
            &TestRequest::get("/static/a.css").host("www.example.com")
        ),
        "static"
    );
    assert_eq!(goes(&mut r, &TestRequest::get("/healthz")), "local 200");
    assert_eq!(
        goes(&mut r, &TestRequest::get("/x").host("old.example.com")),
        "local 301"
    );
    assert_eq!(goes(&mut r, &TestRequest::get("/elsewhere")), "web");
}

#[test]
fn exact_host_is_case_insensitive_and_ignores_port_and_trailing_dot() {
    let mut r = router("[[rules]]\nhost = \"API.example.com\"\ncluster = \"api\"\n");
    for h in ["api.example.com", "Api.Example.COM", "api.example.com."] {
        assert_eq!(goes(&mut r, &TestRequest::get("/").host(h)), "api", "{h}");
    }
    assert_eq!(
        goes(
            &mut r,
            &TestRequest::get("/").header("host", "api.example.com:8443")
        ),
        "api"
    );
    assert_eq!(
        goes(&mut r, &TestRequest::get("/").host("www.example.com")),
        "local 404"
    );
    assert_eq!(
        goes(&mut r, &TestRequest::get("/").host("xapi.example.com")),
        "local 404"
    );
    // No host at all never matches a host condition.
    assert_eq!(goes(&mut r, &TestRequest::get("/")), "local 404");
}

#[test]
fn wildcard_host_matches_subdomains_only() {
    let mut r = router("[[rules]]\nhost = \"*.example.com\"\ncluster = \"sub\"\n");
    for h in ["a.example.com", "a.b.example.com", "A.EXAMPLE.com"] {
        assert_eq!(goes(&mut r, &TestRequest::get("/").host(h)), "sub", "{h}");
    }
    for h in [
        "example.com",
        "badexample.com",
        "a.example.org",
        ".example.com",
    ] {
        assert_eq!(
            goes(&mut r, &TestRequest::get("/").host(h)),
            "local 404",
            "{h}"
        );
    }
}

#[test]
fn exact_path() {
    let mut r = router("[[rules]]\npath = \"/login\"\ncluster = \"auth\"\n");
    assert_eq!(goes(&mut r, &TestRequest::get("/login")), "auth");
    assert_eq!(goes(&mut r, &TestRequest::get("/login?next=/")), "auth");
    assert_eq!(goes(&mut r, &TestRequest::get("/login/")), "local 404");
    assert_eq!(goes(&mut r, &TestRequest::get("/Login")), "local 404");
}

#[test]
fn path_prefix_is_a_plain_string_prefix() {
    let mut r = router("[[rules]]\npath_prefix = \"/api/\"\ncluster = \"api\"\n");
    assert_eq!(goes(&mut r, &TestRequest::get("/api/")), "api");
    assert_eq!(goes(&mut r, &TestRequest::get("/api/v1/users")), "api");
    assert_eq!(goes(&mut r, &TestRequest::get("/api")), "local 404");
    assert_eq!(goes(&mut r, &TestRequest::get("/apis/")), "local 404");
    let mut r = router("[[rules]]\npath_prefix = \"/api\"\ncluster = \"api\"\n");
    assert_eq!(goes(&mut r, &TestRequest::get("/apis")), "api");
}

#[test]
fn path_regex_is_searched_unless_anchored() {
    let mut r = router(
        "[[rules]]\npath_regex = '^/users/[0-9]+$'\ncluster = \"users\"\n\
         [[rules]]\npath_regex = '\\.php'\ncluster = \"php\"\n",
    );
    assert_eq!(goes(&mut r, &TestRequest::get("/users/42")), "users");
    assert_eq!(
        goes(&mut r, &TestRequest::get("/users/42/edit")),
        "local 404"
    );
    assert_eq!(goes(&mut r, &TestRequest::get("/users/abc")), "local 404");
    assert_eq!(goes(&mut r, &TestRequest::get("/old/index.php?x=1")), "php");
}

#[test]
fn methods_match_case_insensitively() {
    let mut r = router("[[rules]]\nmethods = [\"get\", \"HEAD\"]\ncluster = \"read\"\n");
    assert_eq!(goes(&mut r, &TestRequest::get("/")), "read");
    assert_eq!(goes(&mut r, &TestRequest::new("head", "/")), "read");
    assert_eq!(goes(&mut r, &TestRequest::post("/")), "local 404");
}

#[test]
fn header_present_and_equals() {
    let mut r = router(
        "[[rules]]\nheaders = [{ name = \"X-Canary\", equals = \"1\" }]\ncluster = \"canary\"\n\
         [[rules]]\nheaders = [{ name = \"authorization\" }]\ncluster = \"authed\"\n",
    );
    assert_eq!(
        goes(&mut r, &TestRequest::get("/").header("x-canary", "1")),
        "canary"
    );
    assert_eq!(
        goes(&mut r, &TestRequest::get("/").header("x-canary", "0")),
        "local 404"
    );
    assert_eq!(
        goes(&mut r, &TestRequest::get("/").header("Authorization", "")),
        "authed"
    );
    assert_eq!(
        goes(
            &mut r,
            &TestRequest::get("/")
                .header("x-canary", "2")
                .header("authorization", "b")
        ),
        "authed"
    );
    assert_eq!(goes(&mut r, &TestRequest::get("/")), "local 404");
}

#[test]
fn cookie_present_and_equals() {
    let mut r = router(
        "[[rules]]\ncookies = [{ name = \"beta\", equals = \"yes\" }, { name = \"session\" }]\n\
         cluster = \"beta\"\n",
    );
    let both = TestRequest::get("/")
        .cookie("beta", "yes")
        .cookie("session", "s1");
    assert_eq!(goes(&mut r, &both), "beta");
    let wrong = TestRequest::get("/")
        .cookie("beta", "no")
        .cookie("session", "s1");
    assert_eq!(goes(&mut r, &wrong), "local 404");
    let missing = TestRequest::get("/").cookie("beta", "yes");
    assert_eq!(goes(&mut r, &missing), "local 404");
    // A header of the same name is not a cookie.
    let header = TestRequest::get("/")
        .header("beta", "yes")
        .cookie("session", "s1");
    assert_eq!(goes(&mut r, &header), "local 404");
}

#[test]
fn all_conditions_of_a_rule_must_hold_and_the_first_matching_rule_wins() {
    let mut r = router(
        "default_cluster = \"fallback\"\n\
         [[rules]]\nhost = \"a.test\"\npath_prefix = \"/x/\"\nmethods = [\"POST\"]\ncluster = \"one\"\n\
         [[rules]]\nhost = \"a.test\"\ncluster = \"two\"\n\
         [[rules]]\ncluster = \"three\"\n",
    );
    assert_eq!(
        goes(&mut r, &TestRequest::post("/x/1").host("a.test")),
        "one"
    );
    assert_eq!(
        goes(&mut r, &TestRequest::get("/x/1").host("a.test")),
        "two"
    );
    assert_eq!(goes(&mut r, &TestRequest::post("/y").host("a.test")), "two");
    assert_eq!(
        goes(&mut r, &TestRequest::post("/x/1").host("b.test")),
        "three"
    );
}

#[test]
fn default_cluster_or_404_when_nothing_matches() {
    let mut r = router("default_cluster = \"web\"\n[[rules]]\npath = \"/a\"\ncluster = \"a\"\n");
    assert_eq!(cluster(r.route(&TestRequest::get("/b"))), "web");
    let mut r = router("[[rules]]\npath = \"/a\"\ncluster = \"a\"\n");
    let resp = answer(r.route(&TestRequest::get("/b")));
    assert_eq!(resp.status, 404);
    assert_eq!(resp.body, b"no route\n");
    // No settings at all: everything is 404.
    assert_eq!(goes(&mut router(""), &TestRequest::get("/")), "local 404");
}

/// Routes `n` requests made by `make(i)` and counts the clusters chosen.
fn tally(
    r: &mut RouterHarness<RuleRouter>,
    n: usize,
    make: impl Fn(usize) -> TestRequest,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        *counts.entry(cluster(r.route(&make(i)))).or_insert(0) += 1;
    }
    counts
}

const CANARY: &str =
    "[[rules]]\nsplit = [{ cluster = \"a\", weight = 90 }, { cluster = \"b\", weight = 10 }]\n";

#[test]
fn random_split_honours_weights_over_many_draws() {
    testing::seed_random(7);
    let mut r = router(CANARY);
    let counts = tally(&mut r, 20_000, |_| TestRequest::get("/"));
    let a = counts["a"];
    let b = counts["b"];
    assert_eq!(a + b, 20_000);
    // 18 000 expected; the standard deviation is about 42.
    assert!((17_700..=18_300).contains(&a), "{counts:?}");
}

#[test]
fn split_with_three_clusters_and_a_zero_weight() {
    testing::seed_random(11);
    let mut r = router(
        "[[rules]]\nsplit = [{ cluster = \"a\", weight = 1 }, { cluster = \"off\", weight = 0 }, \
         { cluster = \"b\", weight = 2 }, { cluster = \"c\", weight = 1 }]\n",
    );
    let counts = tally(&mut r, 12_000, |_| TestRequest::get("/"));
    assert!(!counts.contains_key("off"), "{counts:?}");
    assert!((2_700..=3_300).contains(&counts["a"]), "{counts:?}");
    assert!((5_600..=6_400).contains(&counts["b"]), "{counts:?}");
    assert!((2_700..=3_300).contains(&counts["c"]), "{counts:?}");
}

#[test]
fn request_id_split_is_deterministic_and_honours_weights() {
    let mut r = router(&format!("{CANARY}split_on = \"request-id\"\n"));
    let by_id = |i: usize| TestRequest::get("/").request_id(&format!("req-{i}"));
    let first = tally(&mut r, 20_000, by_id);
    assert!((17_700..=18_300).contains(&first["a"]), "{first:?}");
    // The same ids land on the same clusters again, whatever the random generator does.
    testing::seed_random(99);
    for i in 0..500 {
        let once = cluster(r.route(&by_id(i)));
        let again = cluster(r.route(&by_id(i)));
        assert_eq!(once, again);
    }
    assert_eq!(tally(&mut r, 20_000, by_id), first);
}

#[test]
fn header_and_cookie_splits_keep_a_client_on_one_side() {
    for (on, make) in [
        (
            "header:x-user",
            (|u: &str| TestRequest::get("/").header("X-User", u)) as fn(&str) -> TestRequest,
        ),
        ("cookie:uid", |u: &str| {
            TestRequest::get("/").cookie("uid", u)
        }),
    ] {
        let mut r = router(&format!("{CANARY}split_on = \"{on}\"\n"));
        let counts = tally(&mut r, 10_000, |i| make(&format!("user{i}")));
        assert!((8_800..=9_200).contains(&counts["a"]), "{on}: {counts:?}");
        for u in 0..200 {
            let user = format!("user{u}");
            let first = cluster(r.route(&make(&user)));
            for _ in 0..3 {
                assert_eq!(cluster(r.route(&make(&user))), first, "{on} {user}");
            }
        }
        // Without the key, the draw is random: both sides are seen.
        let anon = tally(&mut r, 2_000, |_| TestRequest::get("/"));
        assert_eq!(anon.len(), 2, "{on}: {anon:?}");
    }
}

#[test]
fn redirect_plain_with_path_and_with_query() {
    let mut r = router(
        "[[rules]]\nhost = \"a.test\"\nredirect = { location = \"https://b.test/landing\" }\n\
         [[rules]]\nhost = \"c.test\"\nredirect = { location = \"https://d.test/\", status = 308, keep_path = true, keep_query = true }\n\
         [[rules]]\nhost = \"e.test\"\nredirect = { location = \"https://f.test/?from=e\", status = 301, keep_query = true }\n",
    );
    let resp = answer(r.route(&TestRequest::get("/x?y=1").host("a.test")));
    assert_eq!(resp.status, 302);
    assert_eq!(header(&resp, "location"), Some("https://b.test/landing"));
    assert!(resp.body.is_empty());

    let resp = answer(r.route(&TestRequest::get("/docs/a?lang=en").host("c.test")));
    assert_eq!(resp.status, 308);
    assert_eq!(
        header(&resp, "location"),
        Some("https://d.test/docs/a?lang=en")
    );
    let resp = answer(r.route(&TestRequest::get("/docs/a").host("c.test")));
    assert_eq!(header(&resp, "location"), Some("https://d.test/docs/a"));

    let resp = answer(r.route(&TestRequest::get("/p?q=2").host("e.test")));
    assert_eq!(resp.status, 301);
    assert_eq!(
        header(&resp, "location"),
        Some("https://f.test/?from=e&q=2")
    );
}

#[test]
fn local_response_with_headers_and_body() {
    let mut r = router(
        "[[rules]]\npath = \"/healthz\"\nrespond = { status = 200, body = \"ok\\n\" }\n\
         [[rules]]\npath_prefix = \"/admin\"\n\
         respond = { status = 403, body = '{\"error\":\"forbidden\"}', headers = { \"Content-Type\" = \"application/json\", \"x-why\" = \"admin is internal\" } }\n\
         [[rules]]\npath = \"/empty\"\nrespond = { status = 204 }\n",
    );
    let ok = answer(r.route(&TestRequest::get("/healthz")));
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, b"ok\n");
    assert_eq!(
        header(&ok, "content-type"),
        Some("text/plain; charset=utf-8")
    );

    let no = answer(r.route(&TestRequest::get("/admin/users")));
    assert_eq!(no.status, 403);
    assert_eq!(no.body, br#"{"error":"forbidden"}"#);
    assert_eq!(header(&no, "content-type"), Some("application/json"));
    assert_eq!(header(&no, "x-why"), Some("admin is internal"));
    assert_eq!(no.headers.len(), 2);

    let empty = answer(r.route(&TestRequest::get("/empty")));
    assert_eq!(empty, LocalResponse::new(204));
}

#[test]
fn bad_settings_name_the_rule_and_field() {
    let cases: &[(&str, &str)] = &[
        (
            "[[rules]]\ncluster = \"a\"\n[[rules]]\ncluster = \"b\"\n[[rules]]\npath_regex = '(unclosed'\ncluster = \"c\"\n",
            "rules[2].path_regex: invalid regex",
        ),
        (
            "[[rules]]\nhost = \"a.*.com\"\ncluster = \"a\"\n",
            "rules[0].host:",
        ),
        (
            "[[rules]]\nhost = \"*.\"\ncluster = \"a\"\n",
            "rules[0].host:",
        ),
        (
            "[[rules]]\nhost = \"\"\ncluster = \"a\"\n",
            "rules[0].host: empty host",
        ),
        (
            "[[rules]]\npath = \"x\"\ncluster = \"a\"\n",
            "rules[0].path: \"x\" does not start with `/`",
        ),
        (
            "[[rules]]\npath_prefix = \"api\"\ncluster = \"a\"\n",
            "rules[0].path_prefix:",
        ),
        (
            "[[rules]]\npath = \"/a\"\npath_regex = \"a\"\ncluster = \"a\"\n",
            "rules[0].path_regex: a rule has at most one",
        ),
        (
            "[[rules]]\npath = \"/a\"\n",
            "rules[0]: a rule needs exactly one of cluster, split, redirect and respond (it has none)",
        ),
        (
            "[[rules]]\ncluster = \"a\"\nrespond = { status = 200 }\n",
            "(it has cluster, respond)",
        ),
        (
            "[[rules]]\ncluster = \"\"\n",
            "rules[0].cluster: empty cluster name",
        ),
        (
            "default_cluster = \" \"\n",
            "default_cluster: empty cluster name",
        ),
        (
            "[[rules]]\nmethods = [\"GET\", \"B AD\"]\ncluster = \"a\"\n",
            "rules[0].methods[1]:",
        ),
        (
            "[[rules]]\nheaders = [{ name = \"x y\" }]\ncluster = \"a\"\n",
            "rules[0].headers[0].name:",
        ),
        (
            "[[rules]]\ncookies = [{ name = \"ok\" }, { name = \"\" }]\ncluster = \"a\"\n",
            "rules[0].cookies[1].name:",
        ),
        (
            "[[rules]]\nsplit = []\n",
            "rules[0].split: needs at least one cluster",
        ),
        (
            "[[rules]]\nsplit = [{ cluster = \"a\", weight = 0 }]\n",
            "rules[0].split: every weight is 0",
        ),
        (
            "[[rules]]\nsplit = [{ cluster = \"a\", weight = 1 }, { cluster = \"\", weight = 1 }]\n",
            "rules[0].split[1].cluster:",
        ),
        (
            "[[rules]]\nsplit = [{ cluster = \"a\", weight = 1 }]\nsplit_on = \"client-ip\"\n",
            "rules[0].split_on: \"client-ip\"",
        ),
        (
            "[[rules]]\ncluster = \"a\"\nsplit_on = \"random\"\n",
            "rules[0].split_on: only meaningful with split",
        ),
        (
            "[[rules]]\nredirect = { location = \"/x\", status = 200 }\n",
            "rules[0].redirect.status: 200 is not a redirect status",
        ),
        (
            "[[rules]]\nredirect = { location = \"\" }\n",
            "rules[0].redirect.location:",
        ),
        (
            "[[rules]]\nredirect = { location = \"/a\\r\\nx: y\" }\n",
            "rules[0].redirect.location:",
        ),
        (
            "[[rules]]\nrespond = { status = 99 }\n",
            "rules[0].respond.status: 99",
        ),
        (
            "[[rules]]\nrespond = { status = 200, headers = { \"bad name\" = \"v\" } }\n",
            "rules[0].respond.headers:",
        ),
        (
            "[[rules]]\nrespond = { status = 200, headers = { \"x\" = \"a\\nb\" } }\n",
            "rules[0].respond.headers.x:",
        ),
    ];
    for (settings, expected) in cases {
        let err = refused(settings);
        assert!(
            err.contains(expected),
            "settings:\n{settings}\nerror: {err}\nexpected: {expected}"
        );
    }
}

#[test]
fn unknown_keys_and_wrong_types_are_refused_with_a_location() {
    let err = refused("[[rules]]\npath_prefx = \"/a\"\ncluster = \"a\"\n");
    assert!(
        err.contains("path_prefx") && err.contains("line 2"),
        "{err}"
    );
    let err = refused("[[rules]]\nsplit = [{ cluster = \"a\", weight = -1 }]\n");
    assert!(err.contains("line 2"), "{err}");
    let err = refused("default = \"web\"\n");
    assert!(err.contains("default"), "{err}");
}

#[test]
fn split_draw_boundaries_follow_the_running_totals() {
    use crate::rules::{Split, SplitKey};
    let split = Split {
        targets: vec![(0, 90), (1, 100)],
        total: 100,
        on: SplitKey::Random,
    };
    assert_eq!(split.pick(0), 0);
    assert_eq!(split.pick(89), 0);
    assert_eq!(split.pick(90), 1);
    assert_eq!(split.pick(99), 1);
}

#[test]
fn a_cluster_the_proxy_does_not_have_is_refused_at_init_naming_the_field() {
    for (settings, field) in [
        (
            "[[rules]]\npath = \"/a\"\ncluster = \"nope\"\n",
            "rules[0].cluster",
        ),
        ("default_cluster = \"nope\"\n", "default_cluster"),
        (
            "[[rules]]\nsplit = [{ cluster = \"a\", weight = 1 }, { cluster = \"nope\", weight = 1 }]\n",
            "rules[0].split[1].cluster",
        ),
    ] {
        let err = refused(settings);
        assert!(
            err.contains(field) && err.contains("no cluster named `nope`") && err.contains("api"),
            "{err}"
        );
    }
    // With the proxy's real list: the answer is the cluster's index, shown by name.
    let mut r = RouterHarness::<RuleRouter>::init(
        "[[rules]]\npath_prefix = \"/\"\ncluster = \"web\"\n",
        &["api", "web"],
    )
    .unwrap();
    assert_eq!(
        r.route(&TestRequest::get("/x")),
        RouteDecision::cluster("web")
    );
    assert_eq!(r.plugin().rule_count(), 1);
}
