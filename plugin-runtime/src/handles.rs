//! The typed uses of a plugin: balancer, router, filter and health handles. Each is a thin, cloneable wrapper
//! over a shared `HandleCore`; calls are synchronous and run on this thread's instance of the use.

use std::sync::Arc;

use wasmtime::component::Resource;

use super::bindings::{RequestRef, balance, route};
use super::instance::{self, Ahead, CallError, Exports, HandleCore, Live};
use super::{
    BreakerStatus, EndpointId, HeaderOp, Outcome, PluginError, PoolEndpoint, ProbeResult,
    RequestAction, RequestHead, ResponseHead, RouteDecision, Verdict, convert,
};

/// The error for an instance made for another interface (cannot happen: a handle makes its own instances).
fn wrong_exports() -> CallError {
    CallError::Wasm(wasmtime::format_err!(
        "internal: instance made for another interface"
    ))
}

/// Lends `req` to the instance through its request table entry for the length of `call`.
fn with_request<R>(
    live: &mut Live,
    req: &Arc<RequestHead>,
    call: impl FnOnce(&mut Live, Resource<RequestRef>) -> wasmtime::Result<R>,
) -> Result<R, CallError> {
    lend_request(live, Some(Arc::clone(req)))?;
    let result = call(live, Resource::new_borrow(live.inst.request_slot.rep()));
    // Take the request back whatever happened, so the caller's `Arc` is unique again.
    lend_request(live, None)?;
    Ok(result?)
}

fn lend_request(live: &mut Live, req: Option<Arc<RequestHead>>) -> wasmtime::Result<()> {
    let inst = &mut live.inst;
    inst.store
        .data_mut()
        .table
        .get_mut(&inst.request_slot)
        .map_err(wasmtime::Error::new)?
        .0 = req;
    Ok(())
}

fn lend_response(live: &mut Live, resp: Option<Arc<ResponseHead>>) -> wasmtime::Result<()> {
    let inst = &mut live.inst;
    inst.store
        .data_mut()
        .table
        .get_mut(&inst.response_slot)
        .map_err(wasmtime::Error::new)?
        .0 = resp;
    Ok(())
}

/// A use of a plugin as a cluster's balancer.
#[derive(Clone)]
pub struct BalancerHandle {
    choice: Choice,
}

/// What makes a balancer's picks: a Wasm plugin, or (feature `native-choice`, for bench/) plain Rust.
#[derive(Clone)]
enum Choice {
    Wasm(Arc<HandleCore>),
    #[cfg(feature = "native-choice")]
    Native(Arc<super::native::NativeRoundRobin>),
}

impl BalancerHandle {
    pub(crate) fn new(core: Arc<HandleCore>) -> Self {
        BalancerHandle {
            choice: Choice::Wasm(core),
        }
    }

    #[cfg(feature = "native-choice")]
    pub(crate) fn native(balancer: super::native::NativeRoundRobin) -> Self {
        BalancerHandle {
            choice: Choice::Native(Arc::new(balancer)),
        }
    }

    /// Replaces the pool; instances get `pool-changed` before their next pick.
    pub fn set_pool(&self, endpoints: Vec<PoolEndpoint>) {
        match &self.choice {
            Choice::Wasm(core) => core.set_pool(endpoints),
            #[cfg(feature = "native-choice")]
            Choice::Native(n) => n.set_pool(&endpoints),
        }
    }

    /// Picks an endpoint for `req`. `Ok(None)`: the plugin chose none (answer 503). `Err`: the plugin faulted or
    /// answered an id not in the pool; the caller falls back.
    pub fn pick(
        &self,
        req: &Arc<RequestHead>,
        attempt: u32,
        tried: &[EndpointId],
    ) -> Result<Option<EndpointId>, PluginError> {
        match &self.choice {
            Choice::Wasm(core) => wasm_pick(core, req, attempt, tried),
            #[cfg(feature = "native-choice")]
            Choice::Native(n) => Ok(n.pick(tried)),
        }
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        match &self.choice {
            Choice::Wasm(core) => &core.name,
            #[cfg(feature = "native-choice")]
            Choice::Native(_) => super::native::NAME,
        }
    }

    /// This use's circuit breaker (`None` for the native bench balancer, which has none).
    pub fn breaker(&self) -> Option<BreakerStatus> {
        match &self.choice {
            Choice::Wasm(core) => Some(core.breaker()),
            #[cfg(feature = "native-choice")]
            Choice::Native(_) => None,
        }
    }
}

/// How many picks a balancer is asked for at once with `pick-ahead` (the SDK's test harness asks
/// for as many: `sluicegate_sdk::testing::PICK_AHEAD`).
const PICK_AHEAD: u32 = 64;

/// A pick by the balancer's instance on this thread: for a first attempt, the next of the ids it
/// made ahead when it makes them; otherwise one `pick` call.
fn wasm_pick(
    core: &Arc<HandleCore>,
    req: &Arc<RequestHead>,
    attempt: u32,
    tried: &[EndpointId],
) -> Result<Option<EndpointId>, PluginError> {
    let first = attempt == 1 && tried.is_empty();
    core.call_unless(
        |live| {
            if first {
                live.ahead.take().map(Some)
            } else {
                None
            }
        },
        |live| {
            if first
                && !matches!(live.ahead, Ahead::Declined)
                && let Some(id) = pick_ahead(live)?
            {
                return Ok(Some(id));
            }
            // One decision's fuel (after a `pick-ahead` that declined, which had 64).
            instance::decision_budget(&mut live.inst.store, 1);
            // The tried list stays in the store, read by the plugin only on retries
            // (`request.tried-endpoints`); the first attempt crosses numbers only.
            let tried_count = u32::try_from(tried.len()).unwrap_or(u32::MAX);
            live.inst.store.data_mut().set_tried(tried);
            let context = balance::PickContext {
                attempt,
                tried_count,
            };
            let picked = with_request(live, req, |live, r| {
                let Exports::Balance(g) = &live.inst.exports else {
                    wasmtime::bail!("internal: instance made for another interface");
                };
                g.call_pick(&mut live.inst.store, r, context)
            });
            live.inst.store.data_mut().set_tried(&[]);
            let picked = picked?;
            match picked {
                Some(id) if !live.in_pool(id) => Err(outside_pool(live, id, "")),
                other => Ok(other),
            }
        },
    )
}

/// Asks the instance for its next picks (`pick-ahead`) and takes the first; `None` when it
/// declines, after which its picks go to `pick` until the pool changes. A list that is too long
/// or names an id outside the pool is a fault, and declines too.
fn pick_ahead(live: &mut Live) -> Result<Option<EndpointId>, CallError> {
    let Exports::Balance(g) = &live.inst.exports else {
        return Err(wrong_exports());
    };
    // Each pick made ahead is a decision, with a decision's fuel.
    instance::decision_budget(&mut live.inst.store, u64::from(PICK_AHEAD));
    let mut ids = g.call_pick_ahead(&mut live.inst.store, PICK_AHEAD)?;
    live.ahead = Ahead::Declined;
    if ids.len() > PICK_AHEAD as usize {
        return Err(CallError::Invalid(format!(
            "picked {} endpoints ahead when asked for {PICK_AHEAD}",
            ids.len()
        )));
    }
    if let Some(id) = ids.iter().find(|id| !live.in_pool(**id)) {
        return Err(outside_pool(live, *id, " ahead"));
    }
    ids.reverse();
    let first = ids.pop();
    if first.is_some() {
        live.ahead = Ahead::Ids(ids);
    }
    Ok(first)
}

/// The fault of a pick (`how`: "" or " ahead") that names an id outside the instance's pool.
fn outside_pool(live: &Live, id: EndpointId, how: &str) -> CallError {
    CallError::Invalid(format!(
        "picked endpoint {id}{how}, which is not in its pool of {} endpoints",
        live.pool_len()
    ))
}

/// A use of a plugin as a router.
#[derive(Clone)]
pub struct RouterHandle {
    core: Arc<HandleCore>,
}

impl RouterHandle {
    pub(crate) fn new(core: Arc<HandleCore>) -> Self {
        RouterHandle { core }
    }

    /// Chooses the cluster for `req` (an index into the cluster names the router was made with), or a
    /// local answer. An index outside that list is a fault of the plugin.
    pub fn route(&self, req: &Arc<RequestHead>) -> Result<RouteDecision, PluginError> {
        self.core.call(|live| {
            let d = with_request(live, req, |live, r| {
                let Exports::Route(g) = &live.inst.exports else {
                    wasmtime::bail!("internal: instance made for another interface");
                };
                let store = &mut live.inst.store;
                let again = Resource::new_borrow(r.rep());
                match g.call_route(&mut *store, r, req.parts.uri.path())? {
                    route::RouteDecision::Cluster(i) => Ok(RouteDecision::Cluster(i as usize)),
                    route::RouteDecision::Respond => {
                        let answer = g.call_local_answer(&mut *store, again)?;
                        Ok(RouteDecision::Respond(convert::local_response(answer)))
                    }
                }
            })?;
            match d {
                RouteDecision::Cluster(i) if i >= self.core.clusters().len() => {
                    Err(CallError::Invalid(format!(
                        "answered cluster {i}, but there are {} clusters (indexes from 0)",
                        self.core.clusters().len()
                    )))
                }
                d => Ok(d),
            }
        })
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.core.name
    }

    /// This use's circuit breaker.
    pub fn breaker(&self) -> BreakerStatus {
        self.core.breaker()
    }
}

/// A use of a plugin as a request/response filter.
#[derive(Clone)]
pub struct FilterHandle {
    core: Arc<HandleCore>,
}

impl FilterHandle {
    pub(crate) fn new(core: Arc<HandleCore>) -> Self {
        FilterHandle { core }
    }

    /// Filters a request: header changes to apply, or a local answer.
    pub fn on_request(&self, req: &Arc<RequestHead>) -> Result<RequestAction, PluginError> {
        self.core.call(|live| {
            let a = with_request(live, req, |live, r| {
                let Exports::Filter(g) = &live.inst.exports else {
                    wasmtime::bail!("internal: instance made for another interface");
                };
                g.call_on_request(&mut live.inst.store, r)
            })?;
            Ok(convert::request_action(a))
        })
    }

    /// Filters a response: header changes to apply.
    pub fn on_response(
        &self,
        req: &Arc<RequestHead>,
        resp: &Arc<ResponseHead>,
    ) -> Result<Vec<HeaderOp>, PluginError> {
        self.core.call(|live| {
            lend_response(live, Some(Arc::clone(resp)))?;
            let result = with_request(live, req, |live, r| {
                let Exports::Filter(g) = &live.inst.exports else {
                    wasmtime::bail!("internal: instance made for another interface");
                };
                let resp = Resource::new_borrow(live.inst.response_slot.rep());
                g.call_on_response(&mut live.inst.store, r, resp)
            });
            lend_response(live, None)?;
            Ok(convert::header_ops(result?))
        })
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.core.name
    }

    /// This use's circuit breaker.
    pub fn breaker(&self) -> BreakerStatus {
        self.core.breaker()
    }
}

/// A use of a plugin as a health policy.
#[derive(Clone)]
pub struct HealthPolicyHandle {
    core: Arc<HandleCore>,
}

impl HealthPolicyHandle {
    pub(crate) fn new(core: Arc<HandleCore>) -> Self {
        HealthPolicyHandle { core }
    }

    /// Judges one active probe.
    pub fn judge_probe(&self, result: &ProbeResult) -> Result<Verdict, PluginError> {
        let probe = convert::probe_result(result);
        self.core.call(|live| {
            let Exports::Health(g) = &live.inst.exports else {
                return Err(wrong_exports());
            };
            Ok(convert::verdict(
                g.call_judge_probe(&mut live.inst.store, &probe)?,
            ))
        })
    }

    /// Judges one finished request.
    pub fn observe(&self, outcome: &Outcome) -> Result<Verdict, PluginError> {
        let outcome = convert::outcome(outcome);
        self.core.call(|live| {
            let Exports::Health(g) = &live.inst.exports else {
                return Err(wrong_exports());
            };
            Ok(convert::verdict(
                g.call_observe(&mut live.inst.store, outcome)?,
            ))
        })
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.core.name
    }

    /// This use's circuit breaker.
    pub fn breaker(&self) -> BreakerStatus {
        self.core.breaker()
    }
}

impl std::fmt::Debug for BalancerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancerHandle")
            .field("plugin", &self.plugin())
            .finish()
    }
}
impl std::fmt::Debug for RouterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterHandle")
            .field("plugin", &&*self.core.name)
            .finish()
    }
}
impl std::fmt::Debug for FilterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterHandle")
            .field("plugin", &&*self.core.name)
            .finish()
    }
}
impl std::fmt::Debug for HealthPolicyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthPolicyHandle")
            .field("plugin", &&*self.core.name)
            .finish()
    }
}
