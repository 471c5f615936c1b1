//! Test plugin: a filter that sets request header `x-seen-path: <path>`, adds response header
//! `x-filtered: 1`, and answers 403 locally when the request has an `x-deny` header.

use sluicegate_sdk::{Filter, HeaderOp, LocalResponse, Request, RequestAction, Response};

/// Holds nothing.
pub struct EchoFilter;

impl Filter for EchoFilter {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(EchoFilter)
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        if req.header("x-deny").is_some() {
            return RequestAction::Respond(LocalResponse::text(403, "denied by echo-filter\n"));
        }
        RequestAction::Proceed(vec![HeaderOp::set("x-seen-path", req.path())])
    }

    fn on_response(&mut self, _req: &Request, _resp: &Response) -> Vec<HeaderOp> {
        vec![HeaderOp::set("x-filtered", "1")]
    }
}

sluicegate_sdk::export_filter!(EchoFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::{FilterHarness, TestRequest, TestResponse};

    #[test]
    fn marks_requests_and_responses() {
        let mut f = FilterHarness::<EchoFilter>::init("").unwrap();
        let req = TestRequest::get("/a/b?c=d");
        assert_eq!(
            f.on_request(&req),
            RequestAction::Proceed(vec![HeaderOp::set("x-seen-path", "/a/b")])
        );
        assert_eq!(
            f.on_response(&req, &TestResponse::new(200)),
            [HeaderOp::set("x-filtered", "1")]
        );
    }

    #[test]
    fn denies_with_x_deny() {
        let mut f = FilterHarness::<EchoFilter>::init("").unwrap();
        match f.on_request(&TestRequest::get("/").header("X-Deny", "yes")) {
            RequestAction::Respond(resp) => assert_eq!(resp.status, 403),
            other => panic!("expected a local 403, got {other:?}"),
        }
    }
}
