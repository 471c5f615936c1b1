//! Filters, routers and health policies through the runtime, and one component serving several kinds.

use crate::plugin_support;

use std::sync::Arc;

use plugin_support::{built, pool, request};
use sluicegate::plugin::{
    Failure, HeaderOp, Kind, LocalResponse, NoFacts, Outcome, PluginRuntime, ProbeResult,
    RequestAction, ResponseHead, RouteDecision, RuntimeOptions, Verdict,
};

fn response(status: u16) -> Arc<ResponseHead> {
    Arc::new(ResponseHead {
        status: http::StatusCode::from_u16(status).unwrap(),
        headers: http::HeaderMap::new(),
        endpoint: Some(3),
        cluster: Some("default".into()),
    })
}

#[test]
fn echo_filter_rewrites_headers_and_answers_locally() {
    let rt = PluginRuntime::new(RuntimeOptions::default()).unwrap();
    rt.load_bytes("echo-filter", &built("tests/plugins/echo-filter"), "test")
        .unwrap();
    let f = rt.filter("echo-filter", "").unwrap();
    assert_eq!(f.plugin(), "echo-filter");

    let req = request("/a/b?c=d", &[]);
    assert_eq!(
        f.on_request(&req).unwrap(),
        RequestAction::Proceed(vec![HeaderOp::Set("x-seen-path".into(), "/a/b".into())])
    );
    match f.on_request(&request("/", &[("X-Deny", "yes")])).unwrap() {
        RequestAction::Respond(LocalResponse { status, body, .. }) => {
            assert_eq!(status, 403);
            assert_eq!(body, b"denied by echo-filter\n");
        }
        other => panic!("expected a local 403, got {other:?}"),
    }
    assert_eq!(
        f.on_response(&req, &response(200)).unwrap(),
        vec![HeaderOp::Set("x-filtered".into(), "1".into())]
    );
    // The request went back to the caller: the plugin held it only for the calls.
    assert_eq!(Arc::strong_count(&req), 1);
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| n.to_string()).collect()
}

#[test]
fn only_router_routes_and_is_refused_as_a_filter() {
    let rt = PluginRuntime::new(RuntimeOptions::default()).unwrap();
    let status = rt
        .load_bytes("only-router", &built("tests/plugins/only-router"), "test")
        .unwrap();
    assert_eq!(status.kinds, vec![Kind::Router]);
    // The answer is the index of the cluster in the list the router was made with.
    let r = rt
        .router("only-router", "", &names(&["api", "default"]))
        .unwrap();
    assert_eq!(
        r.route(&request("/anything", &[])).unwrap(),
        RouteDecision::Cluster(1)
    );
    // A name that is not in the list: the SDK answers 502 itself, saying which.
    let r = rt.router("only-router", "", &names(&["api"])).unwrap();
    match r.route(&request("/anything", &[])).unwrap() {
        RouteDecision::Respond(local) => {
            assert_eq!(local.status, 502);
            let body = String::from_utf8(local.body).unwrap();
            assert!(body.contains("unknown cluster default"), "{body}");
        }
        other => panic!("{other:?}"),
    }
    assert!(rt.filter("only-router", "").is_err());
}

#[test]
fn one_component_serves_every_kind() {
    let rt = PluginRuntime::new(RuntimeOptions::default()).unwrap();
    let status = rt
        .load_bytes("all-kinds", &built("tests/plugins/all-kinds"), "test")
        .unwrap();
    assert_eq!(
        status.kinds,
        vec![
            Kind::Balancer,
            Kind::Router,
            Kind::Filter,
            Kind::HealthPolicy
        ]
    );

    let b = rt.balancer("all-kinds", "", Arc::new(NoFacts)).unwrap();
    b.set_pool(pool(&[9, 4, 6]));
    assert_eq!(b.pick(&request("/", &[]), 1, &[]).unwrap(), Some(4));

    let r = rt.router("all-kinds", "", &names(&["default"])).unwrap();
    let redirect = r
        .route(&request(
            "http://shop.example:8080/cart",
            &[("x-force-https", "1")],
        ))
        .unwrap();
    assert_eq!(
        redirect,
        RouteDecision::Respond(LocalResponse {
            status: 308,
            headers: vec![("location".into(), "https://shop.example/cart".into())],
            body: vec![],
        })
    );
    let via_host_header = r
        .route(&request(
            "/x",
            &[("host", "a.example:81"), ("x-force-https", "1")],
        ))
        .unwrap();
    assert!(
        matches!(via_host_header, RouteDecision::Respond(LocalResponse { ref headers, .. })
        if headers[0].1 == "https://a.example/x"),
        "{via_host_header:?}"
    );
    assert_eq!(
        r.route(&request("/", &[])).unwrap(),
        RouteDecision::Cluster(0)
    );

    let f = rt.filter("all-kinds", "").unwrap();
    assert_eq!(
        f.on_request(&request("/", &[])).unwrap(),
        RequestAction::Proceed(vec![])
    );
    assert_eq!(
        f.on_response(&request("/", &[]), &response(200)).unwrap(),
        vec![HeaderOp::Set("x-all-kinds".into(), "1".into())]
    );

    let h = rt.health_policy("all-kinds", "").unwrap();
    let probe = |status| ProbeResult {
        endpoint: 4,
        status,
        headers: vec![("content-type".into(), "text/plain".into())],
        body_prefix: b"ok".to_vec(),
        failure: status.is_none().then_some(Failure::Connect),
        duration_micros: 1200,
    };
    assert_eq!(h.judge_probe(&probe(Some(200))).unwrap(), Verdict::Pass);
    assert_eq!(h.judge_probe(&probe(Some(503))).unwrap(), Verdict::Fail);
    assert_eq!(h.judge_probe(&probe(None)).unwrap(), Verdict::Eject);
    let outcome = Outcome {
        endpoint: 4,
        status: Some(500),
        failure: None,
        duration_micros: 900,
    };
    assert_eq!(h.observe(&outcome).unwrap(), Verdict::Fail);
    assert_eq!(
        rt.counters(),
        vec![("all-kinds".to_owned(), "judged".to_owned(), 4)]
    );
}
