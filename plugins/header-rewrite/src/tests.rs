//! Unit tests through the SDK harness: every placeholder, every op on both sides, refusals.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sluicegate_sdk::testing::{FilterHarness, TestRequest, TestResponse};
use sluicegate_sdk::{HeaderOp, RequestAction};

use crate::HeaderRewrite;

fn filter(settings: &str) -> FilterHarness<HeaderRewrite> {
    FilterHarness::<HeaderRewrite>::init(settings).unwrap_or_else(|e| panic!("refused: {e}"))
}

fn refused(settings: &str) -> String {
    match FilterHarness::<HeaderRewrite>::init(settings) {
        Ok(_) => panic!("accepted: {settings}"),
        Err(e) => e,
    }
}

fn request_ops(f: &mut FilterHarness<HeaderRewrite>, req: &TestRequest) -> Vec<HeaderOp> {
    match f.on_request(req) {
        RequestAction::Proceed(ops) => ops,
        RequestAction::Respond(r) => panic!("the filter answered {}", r.status),
    }
}

fn rule(side: &str, op: &str, name: &str, value: &str) -> String {
    format!("[[{side}]]\nop = \"{op}\"\nname = \"{name}\"\nvalue = '{value}'\n")
}

fn full_request() -> TestRequest {
    TestRequest::get("/shop/cart?item=3&n=1")
        .host("shop.example.com")
        .client_ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)))
        .request_id("rid-42")
}

#[test]
fn readme_example_is_accepted_and_works() {
    let readme = include_str!("../README.md");
    let start = readme.find("```toml\n").expect("README has a toml example") + 8;
    let len = readme[start..].find("```").expect("closed block");
    let mut f = filter(&readme[start..start + len]);
    assert_eq!(
        request_ops(&mut f, &full_request()),
        [
            HeaderOp::set("x-real-ip", "192.0.2.7"),
            HeaderOp::append("forwarded", "for=\"192.0.2.7\";host=shop.example.com"),
            HeaderOp::remove("x-internal-debug"),
        ]
    );
    let resp = TestResponse::new(200).cluster("shop").endpoint(3);
    assert_eq!(
        f.on_response(&full_request(), &resp),
        [
            HeaderOp::set("x-served-by", "shop/3"),
            HeaderOp::set("x-request-id", "rid-42"),
            HeaderOp::remove("server"),
        ]
    );
}

#[test]
fn every_request_placeholder() {
    let mut f = filter(&rule(
        "request",
        "set",
        "x-all",
        "{method} {host}{path}?{query} from {client_ip} id={request_id}",
    ));
    assert_eq!(
        request_ops(&mut f, &full_request()),
        [HeaderOp::set(
            "x-all",
            "GET shop.example.com/shop/cart?item=3&n=1 from 192.0.2.7 id=rid-42"
        )]
    );
    let v6 = TestRequest::post("/")
        .host("h")
        .client_ip(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)));
    let mut f = filter(&rule("request", "set", "x-ip", "[{client_ip}] {method}"));
    assert_eq!(
        request_ops(&mut f, &v6),
        [HeaderOp::set("x-ip", "[2001:db8::1] POST")]
    );
}

#[test]
fn every_response_placeholder_and_request_ones_on_responses() {
    let mut f = filter(&rule(
        "response",
        "add",
        "x-trace",
        "{status} {cluster}#{endpoint} for {method} {path} ({request_id})",
    ));
    let resp = TestResponse::new(503).cluster("api").endpoint(12);
    assert_eq!(
        f.on_response(&full_request(), &resp),
        [HeaderOp::append(
            "x-trace",
            "503 api#12 for GET /shop/cart (rid-42)"
        )]
    );
}

#[test]
fn literal_braces_and_plain_values() {
    let mut f = filter(&rule(
        "request",
        "set",
        "x-json",
        "{{\"id\":\"{request_id}\"}}",
    ));
    assert_eq!(
        request_ops(&mut f, &full_request()),
        [HeaderOp::set("x-json", "{\"id\":\"rid-42\"}")]
    );
    let mut f = filter(&rule("request", "set", "x-plain", "no placeholders"));
    assert_eq!(
        request_ops(&mut f, &TestRequest::get("/")),
        [HeaderOp::set("x-plain", "no placeholders")]
    );
}

#[test]
fn ops_on_both_sides_in_order_with_lower_case_names() {
    let settings = [
        rule("request", "remove", "X-Debug", "").replace("value = ''\n", ""),
        rule("request", "set", "X-Env", "prod"),
        rule("request", "append", "via", "sluicegate"),
        rule("response", "add", "Set-Cookie", "seen=1"),
        rule("response", "set", "cache-control", "no-store"),
        rule("response", "remove", "X-Powered-By", "").replace("value = ''\n", ""),
    ]
    .concat();
    let mut f = filter(&settings);
    assert_eq!(
        request_ops(&mut f, &TestRequest::get("/")),
        [
            HeaderOp::remove("x-debug"),
            HeaderOp::set("x-env", "prod"),
            HeaderOp::append("via", "sluicegate"),
        ]
    );
    assert_eq!(
        f.on_response(&TestRequest::get("/"), &TestResponse::new(200)),
        [
            HeaderOp::append("set-cookie", "seen=1"),
            HeaderOp::set("cache-control", "no-store"),
            HeaderOp::remove("x-powered-by"),
        ]
    );
}

#[test]
fn rules_with_a_missing_value_are_skipped_and_the_others_kept() {
    let settings = [
        rule("request", "set", "x-host", "{host}"),
        rule("request", "set", "x-query", "q={query}"),
        rule("request", "set", "x-path", "{path}"),
        rule("response", "set", "x-by", "{cluster}/{endpoint}"),
        rule("response", "set", "x-status", "{status}"),
    ]
    .concat();
    let mut f = filter(&settings);
    // No host, no query string.
    assert_eq!(
        request_ops(&mut f, &TestRequest::get("/p")),
        [HeaderOp::set("x-path", "/p")]
    );
    // A local answer: no cluster, no endpoint.
    assert_eq!(
        f.on_response(&TestRequest::get("/p"), &TestResponse::new(404)),
        [HeaderOp::set("x-status", "404")]
    );
    // A cluster answered but the endpoint is unknown: still skipped.
    assert_eq!(
        f.on_response(
            &TestRequest::get("/p"),
            &TestResponse::new(502).cluster("c")
        ),
        [HeaderOp::set("x-status", "502")]
    );
}

#[test]
fn no_settings_change_nothing() {
    let mut f = filter("");
    assert_eq!(request_ops(&mut f, &full_request()), []);
    assert_eq!(
        f.on_response(&full_request(), &TestResponse::new(200).endpoint(1)),
        []
    );
}

#[test]
fn bad_settings_name_the_rule_and_field() {
    let cases = [
        (
            [
                rule("request", "set", "a", "x"),
                rule("request", "set", "b", "{clientip}"),
            ]
            .concat(),
            "request[1].value: unknown placeholder {clientip} (known: {client_ip}",
        ),
        (
            rule("request", "set", "x", "{cluster}"),
            "request[0].value: {cluster} is only available in response rules",
        ),
        (
            rule("request", "set", "x", "{endpoint}"),
            "request[0].value: {endpoint} is only available",
        ),
        (
            rule("request", "set", "x", "{status}"),
            "request[0].value: {status} is only available",
        ),
        (
            rule("response", "set", "x", "{nope}"),
            "response[0].value: unknown placeholder {nope}",
        ),
        (
            rule("response", "set", "x", "a {path"),
            "response[0].value: `{` without a closing `}`",
        ),
        (
            rule("response", "set", "x", "a } b"),
            "response[0].value: `}` without an opening `{`",
        ),
        (
            rule("request", "sett", "x", "v"),
            "request[0].op: unknown op \"sett\"",
        ),
        (
            rule("request", "set", "bad name", "v"),
            "request[0].name: \"bad name\" is not a header name",
        ),
        (rule("request", "set", "", "v"), "request[0].name:"),
        (
            "[[request]]\nop = \"set\"\nname = \"x\"\n".to_owned(),
            "request[0].value: required for op \"set\"",
        ),
        (
            rule("response", "remove", "x", "v"),
            "response[0].value: op \"remove\" takes no value",
        ),
    ];
    for (settings, expected) in cases {
        let err = refused(&settings);
        assert!(
            err.contains(expected),
            "settings:\n{settings}\nerror: {err}\nexpected: {expected}"
        );
    }
    let err = refused("[[request]]\nop = \"set\"\nname = \"x\"\nvalue = \"a\\r\\nInjected: 1\"\n");
    assert!(
        err.contains("request[0].value: control characters"),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_refused_with_a_location() {
    let err =
        refused("[[request]]\nop = \"set\"\nname = \"x\"\nvalue = \"v\"\nwhen = \"always\"\n");
    assert!(err.contains("when") && err.contains("line"), "{err}");
    let err = refused("[[requests]]\nop = \"remove\"\nname = \"x\"\n");
    assert!(err.contains("requests"), "{err}");
}
