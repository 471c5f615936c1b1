//! The glue from the generated bindings ([`crate::wit`]) to the curated API (Wasm only): where an
//! export keeps its plugin's instance, and each world's `Guest` implemented for the plugin traits.
#![allow(missing_docs, unsafe_code, clippy::all)]

use std::cell::RefCell;
use std::marker::PhantomData;
use std::thread::LocalKey;

use crate::route::{ClusterNames, Resolved};
use crate::wit::{balancer, filter, health, host, router, types};
use crate::{Balancer, Filter, HealthPolicy, Router};

use balancer::exports::sluicegate::plugin::balance as wit_balance;
use filter::exports::sluicegate::plugin::filter as wit_filter;
use health::exports::sluicegate::plugin::health as wit_health;
use router::exports::sluicegate::plugin::route as wit_route;

/// Where an export keeps its plugin's instance: a thread-local of the instance's own type, which
/// the export macro declares in the plugin crate (Rust has no generic statics). A call reaches the
/// instance with a borrow-flag check, where a type-erased slot would cost a downcast per call.
/// Wasm runs one thread, so this is all the state an export needs.
pub trait Slot<T: 'static> {
    fn key() -> &'static LocalKey<RefCell<Option<T>>>;
}

/// Runs `f` on the instance in `S`, or returns `None` when `init` has not succeeded yet.
fn with_instance<T: 'static, S: Slot<T>, R>(f: impl FnOnce(&mut T) -> R) -> Option<R> {
    S::key().with(|cell| cell.borrow_mut().as_mut().map(f))
}

/// What `init` does for every kind: make sure panics reach the host, drop the old instance (a
/// second `init` starts over), then keep the new one or hand back the refusal.
fn init_into<T: 'static, S: Slot<T>>(
    made: impl FnOnce() -> Result<T, String>,
) -> Result<(), String> {
    hand_panics_to_the_host();
    S::key().with(|cell| {
        *cell.borrow_mut() = None;
        *cell.borrow_mut() = Some(made()?);
        Ok(())
    })
}

/// Installs (once) a panic hook that hands the panic's place and text to the host as an `error`
/// log line starting with `panicked at ` just before the trap: the host puts it in the fault's
/// line, where the trap alone says only "unreachable instruction executed".
fn hand_panics_to_the_host() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let text = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(a panic without a text message)");
            let at = info.location().map_or_else(
                || "an unknown place".to_owned(),
                |l| format!("{}:{}:{}", l.file(), l.line(), l.column()),
            );
            crate::host::log(
                crate::host::Level::Error,
                &format!("panicked at {at}: {text}"),
            );
        }));
    });
}

fn not_initialised(kind: &str) {
    crate::host::log(
        crate::host::Level::Error,
        &format!("{kind} called before a successful init; ignored"),
    );
}

/// Implements the generated `balance` guest trait for a [`Balancer`].
pub struct BalancerExport<T, S>(PhantomData<(T, S)>);

impl<T: Balancer + 'static, S: Slot<T>> wit_balance::Guest for BalancerExport<T, S> {
    fn init(config: String) -> Result<(), String> {
        init_into::<T, S>(|| T::init(&config))
    }

    fn pool_changed(endpoints: Vec<types::Endpoint>) {
        let endpoints: Vec<crate::Endpoint> = endpoints.into_iter().map(Into::into).collect();
        if with_instance::<T, S, _>(|b| b.pool_changed(&endpoints)).is_none() {
            not_initialised("pool-changed");
        }
    }

    fn pick(request: &types::Request, context: wit_balance::PickContext) -> Option<u32> {
        // The tried list crosses only on retries: reading it costs a second entry into
        // this module (its allocator), which a first attempt should not pay.
        let tried = if context.tried_count == 0 {
            Vec::new()
        } else {
            request.tried_endpoints()
        };
        let ctx = crate::PickContext {
            attempt: context.attempt,
            tried,
        };
        let req = crate::Request::from_host(request);
        with_instance::<T, S, _>(|b| b.pick(&req, &ctx)).flatten()
    }

    fn pick_ahead(count: u32) -> Vec<u32> {
        with_instance::<T, S, _>(|b| b.pick_ahead(count)).unwrap_or_default()
    }
}

/// A router's instance with the proxy's cluster names its answers resolve against.
pub struct Routing<T> {
    router: T,
    clusters: ClusterNames,
}

/// Implements the generated `route` guest trait for a [`Router`].
pub struct RouterExport<T, S>(PhantomData<(T, S)>);

thread_local! {
    /// The answer of a `route` that said `respond`, which the host takes with `local-answer`.
    static LOCAL_ANSWER: RefCell<Option<crate::LocalResponse>> = const { RefCell::new(None) };
}

impl<T: Router + 'static, S: Slot<Routing<T>>> wit_route::Guest for RouterExport<T, S> {
    fn init(config: String, clusters: Vec<String>) -> Result<(), String> {
        init_into::<Routing<T>, S>(|| {
            T::init(&config, &clusters).map(|router| Routing {
                router,
                clusters: ClusterNames::new(clusters),
            })
        })
    }

    fn route(request: &types::Request, path: String) -> wit_route::RouteDecision {
        let req = crate::Request::from_host_with_path(request, &path);
        let resolved =
            with_instance::<Routing<T>, S, _>(|r| r.clusters.resolve(r.router.route(&req)));
        let answer = match resolved {
            Some(Resolved::Cluster(i)) => return wit_route::RouteDecision::Cluster(i),
            Some(Resolved::Respond(answer)) => answer,
            None => {
                not_initialised("route");
                crate::LocalResponse::text(500, "router plugin not initialised")
            }
        };
        LOCAL_ANSWER.with(|a| *a.borrow_mut() = Some(answer));
        wit_route::RouteDecision::Respond
    }

    fn local_answer(_request: &types::Request) -> types::LocalResponse {
        LOCAL_ANSWER
            .with(|a| a.borrow_mut().take())
            .unwrap_or_else(|| {
                crate::LocalResponse::text(500, "router plugin gave no local answer\n")
            })
            .into()
    }
}

/// Implements the generated `filter` guest trait for a [`Filter`].
pub struct FilterExport<T, S>(PhantomData<(T, S)>);

impl<T: Filter + 'static, S: Slot<T>> wit_filter::Guest for FilterExport<T, S> {
    fn init(config: String) -> Result<(), String> {
        init_into::<T, S>(|| T::init(&config))
    }

    fn on_request(request: &types::Request) -> wit_filter::RequestAction {
        let req = crate::Request::from_host(request);
        match with_instance::<T, S, _>(|f| f.on_request(&req)) {
            Some(crate::RequestAction::Proceed(ops)) => {
                wit_filter::RequestAction::Proceed(ops.into_iter().map(Into::into).collect())
            }
            Some(crate::RequestAction::Respond(resp)) => {
                wit_filter::RequestAction::Respond(resp.into())
            }
            None => {
                not_initialised("on-request");
                wit_filter::RequestAction::Proceed(Vec::new())
            }
        }
    }

    fn on_response(request: &types::Request, response: &types::Response) -> Vec<types::HeaderOp> {
        let req = crate::Request::from_host(request);
        let resp = crate::Response::from_host(response);
        match with_instance::<T, S, _>(|f| f.on_response(&req, &resp)) {
            Some(ops) => ops.into_iter().map(Into::into).collect(),
            None => {
                not_initialised("on-response");
                Vec::new()
            }
        }
    }
}

/// Implements the generated `health` guest trait for a [`HealthPolicy`].
pub struct HealthExport<T, S>(PhantomData<(T, S)>);

impl<T: HealthPolicy + 'static, S: Slot<T>> wit_health::Guest for HealthExport<T, S> {
    fn init(config: String) -> Result<(), String> {
        init_into::<T, S>(|| T::init(&config))
    }

    fn judge_probe(result: wit_health::ProbeResult) -> wit_health::Verdict {
        let probe = crate::ProbeResult {
            endpoint: result.endpoint,
            status: result.status,
            headers: result.headers,
            body_prefix: result.body_prefix,
            failure: result.failure.map(Into::into),
            duration_micros: result.duration_micros,
        };
        with_instance::<T, S, _>(|h| h.judge_probe(&probe))
            .unwrap_or(crate::Verdict::Abstain)
            .into()
    }

    fn observe(outcome: wit_health::Outcome) -> wit_health::Verdict {
        let outcome = crate::Outcome {
            endpoint: outcome.endpoint,
            status: outcome.status,
            failure: outcome.failure.map(Into::into),
            duration_micros: outcome.duration_micros,
        };
        with_instance::<T, S, _>(|h| h.observe(&outcome))
            .unwrap_or(crate::Verdict::Abstain)
            .into()
    }
}

impl From<types::Endpoint> for crate::Endpoint {
    fn from(e: types::Endpoint) -> Self {
        crate::Endpoint {
            id: e.id,
            address: e.address,
            weight: e.weight,
            healthy: e.healthy,
            metadata: e.metadata,
        }
    }
}

impl From<crate::LocalResponse> for types::LocalResponse {
    fn from(r: crate::LocalResponse) -> Self {
        types::LocalResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl From<crate::HeaderOp> for types::HeaderOp {
    fn from(op: crate::HeaderOp) -> Self {
        match op {
            crate::HeaderOp::Set(name, value) => types::HeaderOp::Set((name, value)),
            crate::HeaderOp::Append(name, value) => types::HeaderOp::Append((name, value)),
            crate::HeaderOp::Remove(name) => types::HeaderOp::Remove(name),
        }
    }
}

impl From<wit_health::Failure> for crate::Failure {
    fn from(f: wit_health::Failure) -> Self {
        match f {
            wit_health::Failure::Connect => crate::Failure::Connect,
            wit_health::Failure::Reset => crate::Failure::Reset,
            wit_health::Failure::Timeout => crate::Failure::Timeout,
            wit_health::Failure::Protocol => crate::Failure::Protocol,
        }
    }
}

impl From<crate::Verdict> for wit_health::Verdict {
    fn from(v: crate::Verdict) -> Self {
        match v {
            crate::Verdict::Pass => wit_health::Verdict::Pass,
            crate::Verdict::Fail => wit_health::Verdict::Fail,
            crate::Verdict::Eject => wit_health::Verdict::Eject,
            crate::Verdict::Abstain => wit_health::Verdict::Abstain,
        }
    }
}

impl From<types::IpAddress> for std::net::IpAddr {
    fn from(ip: types::IpAddress) -> Self {
        match ip {
            types::IpAddress::Ipv4((a, b, c, d)) => std::net::Ipv4Addr::new(a, b, c, d).into(),
            types::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
                std::net::Ipv6Addr::new(a, b, c, d, e, f, g, h).into()
            }
        }
    }
}
