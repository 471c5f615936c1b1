//! Conversions between the host's plugin types and the generated WIT types, kept out of the call path's logic.

use super::bindings::{filter, health, types};
use super::{
    Failure, HeaderOp, LocalResponse, Outcome, PoolEndpoint, ProbeResult, RequestAction, Verdict,
};

pub(crate) fn endpoint(e: PoolEndpoint) -> types::Endpoint {
    types::Endpoint {
        id: e.id,
        address: e.address,
        weight: e.weight,
        healthy: e.healthy,
        metadata: e.metadata,
    }
}

pub(crate) fn local_response(r: types::LocalResponse) -> LocalResponse {
    LocalResponse {
        status: r.status,
        headers: r.headers,
        body: r.body,
    }
}

pub(crate) fn header_ops(ops: Vec<types::HeaderOp>) -> Vec<HeaderOp> {
    ops.into_iter()
        .map(|op| match op {
            types::HeaderOp::Set((n, v)) => HeaderOp::Set(n, v),
            types::HeaderOp::Append((n, v)) => HeaderOp::Append(n, v),
            types::HeaderOp::Remove(n) => HeaderOp::Remove(n),
        })
        .collect()
}

pub(crate) fn request_action(a: filter::RequestAction) -> RequestAction {
    match a {
        filter::RequestAction::Proceed(ops) => RequestAction::Proceed(header_ops(ops)),
        filter::RequestAction::Respond(r) => RequestAction::Respond(local_response(r)),
    }
}

fn failure(f: Failure) -> health::Failure {
    match f {
        Failure::Connect => health::Failure::Connect,
        Failure::Reset => health::Failure::Reset,
        Failure::Timeout => health::Failure::Timeout,
        Failure::Protocol => health::Failure::Protocol,
    }
}

pub(crate) fn probe_result(p: &ProbeResult) -> health::ProbeResult {
    health::ProbeResult {
        endpoint: p.endpoint,
        status: p.status,
        headers: p.headers.clone(),
        body_prefix: p.body_prefix.clone(),
        failure: p.failure.map(failure),
        duration_micros: p.duration_micros,
    }
}

pub(crate) fn outcome(o: &Outcome) -> health::Outcome {
    health::Outcome {
        endpoint: o.endpoint,
        status: o.status,
        failure: o.failure.map(failure),
        duration_micros: o.duration_micros,
    }
}

pub(crate) fn verdict(v: health::Verdict) -> Verdict {
    match v {
        health::Verdict::Pass => Verdict::Pass,
        health::Verdict::Fail => Verdict::Fail,
        health::Verdict::Eject => Verdict::Eject,
        health::Verdict::Abstain => Verdict::Abstain,
    }
}
