//! The native test harness (not in the Wasm build): plays the proxy so a plugin crate unit-tests
//! its logic with plain `cargo test`.
//!
//! - [`TestPool`] builds the pool a balancer is given; [`TestRequest`] and [`TestResponse`]
//!   stand in for the proxy's borrowed request and response.
//! - [`BalancerHarness`], [`RouterHarness`], [`FilterHarness`] and [`HealthHarness`] call a plugin
//!   the way the proxy does (init with settings, pool changes, picks with attempt and tried, ...)
//!   and check its answers the way the proxy does (a pick outside the pool panics: in the proxy
//!   it is a plugin fault).
//! - The [`host`](crate::host) functions read this thread's fake facts ([`set_in_flight`],
//!   [`set_latency`], [`advance_clock`], [`seed_random`]) and record what the plugin wrote
//!   ([`logs`], [`counter`]). The state is per thread, so tests running in parallel don't mix;
//!   [`reset`] clears it.
//!
//! ```
//! use sluicegate_sdk::testing::{TestPool, TestRequest};
//! use std::net::{IpAddr, Ipv4Addr};
//!
//! let pool = TestPool::new().endpoint("10.0.0.1:80", 1).unhealthy("10.0.0.2:80", 3);
//! assert_eq!(pool.endpoints()[1].id, 1);
//! assert!(!pool.endpoints()[1].healthy);
//!
//! let req = TestRequest::get("/cart?item=3")
//!     .header("X-User", "alice")
//!     .cookie("session", "abc")
//!     .client_ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
//! let r = req.as_request();
//! assert_eq!(r.path(), "/cart");
//! assert_eq!(r.query().as_deref(), Some("item=3"));
//! assert_eq!(r.header("x-user").as_deref(), Some("alice"));
//! assert_eq!(r.cookie("session").as_deref(), Some("abc"));
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::host::Level;
use crate::native_host::{HarnessState, with_state};
use crate::request::{RequestSource, ResponseSource};
use crate::route::{ClusterNames, Resolved};
use crate::{
    Balancer, Endpoint, EndpointId, Filter, HeaderOp, HealthPolicy, Outcome, PickContext,
    ProbeResult, Request, RequestAction, Response, RouteDecision, Router, Verdict,
};

/// Clears this thread's harness state: load figures, logs, counters, clock and random seed.
pub fn reset() {
    with_state(|s| *s = HarnessState::new())
}

/// Sets what [`host::in_flight`](crate::host::in_flight) answers for `endpoint`.
pub fn set_in_flight(endpoint: EndpointId, requests: u32) {
    with_state(|s| s.in_flight.insert(endpoint, requests));
}

/// Sets what [`host::latency_ewma_micros`](crate::host::latency_ewma_micros) answers for `endpoint`.
pub fn set_latency(endpoint: EndpointId, micros: u32) {
    with_state(|s| s.latency.insert(endpoint, micros));
}

/// Moves the fake clock read by [`host::now_nanos`](crate::host::now_nanos) forward.
pub fn advance_clock(nanos: u64) {
    with_state(|s| s.now_nanos = s.now_nanos.saturating_add(nanos));
}

/// Restarts [`host::random_u64`](crate::host::random_u64)'s deterministic sequence from `seed`.
pub fn seed_random(seed: u64) {
    with_state(|s| s.rng = seed);
}

/// Everything the plugin logged on this thread so far, oldest first.
pub fn logs() -> Vec<(Level, String)> {
    with_state(|s| s.logs.clone())
}

/// Takes (and clears) what the plugin logged on this thread so far.
pub fn take_logs() -> Vec<(Level, String)> {
    with_state(|s| std::mem::take(&mut s.logs))
}

/// The value of a counter bumped through [`host::counter_add`](crate::host::counter_add) (0 if never).
pub fn counter(name: &str) -> u64 {
    with_state(|s| s.counters.get(name).copied().unwrap_or(0))
}

/// Every counter bumped on this thread, by name.
pub fn counters() -> BTreeMap<String, u64> {
    with_state(|s| s.counters.clone())
}

/// A pool to hand a balancer, built endpoint by endpoint. Ids are given in order from 0 unless
/// chosen with [`TestPool::endpoint_with_id`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestPool {
    endpoints: Vec<Endpoint>,
}

impl TestPool {
    /// An empty pool.
    pub fn new() -> Self {
        TestPool::default()
    }

    fn next_id(&self) -> EndpointId {
        self.endpoints.iter().map(|e| e.id + 1).max().unwrap_or(0)
    }

    /// Adds a healthy endpoint with the next free id.
    pub fn endpoint(self, address: &str, weight: u32) -> Self {
        let id = self.next_id();
        self.endpoint_with_id(id, address, weight)
    }

    /// Adds an unhealthy endpoint with the next free id.
    pub fn unhealthy(mut self, address: &str, weight: u32) -> Self {
        let id = self.next_id();
        self = self.endpoint_with_id(id, address, weight);
        self.set_healthy(id, false);
        self
    }

    /// Adds a healthy endpoint with a chosen id (replacing any endpoint that had it).
    pub fn endpoint_with_id(mut self, id: EndpointId, address: &str, weight: u32) -> Self {
        self.endpoints.retain(|e| e.id != id);
        self.endpoints.push(Endpoint {
            id,
            address: address.to_owned(),
            weight,
            healthy: true,
            metadata: Vec::new(),
        });
        self
    }

    /// Adds a metadata pair to the endpoint added last.
    ///
    /// # Panics
    /// When the pool is empty.
    pub fn meta(mut self, key: &str, value: &str) -> Self {
        let last = self
            .endpoints
            .last_mut()
            .expect("TestPool::meta needs an endpoint to attach to");
        last.metadata.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Marks an endpoint healthy or not (as the proxy's health checks would).
    ///
    /// # Panics
    /// When no endpoint has that id.
    pub fn set_healthy(&mut self, id: EndpointId, healthy: bool) {
        self.get_mut(id).healthy = healthy;
    }

    /// Changes an endpoint's weight.
    ///
    /// # Panics
    /// When no endpoint has that id.
    pub fn set_weight(&mut self, id: EndpointId, weight: u32) {
        self.get_mut(id).weight = weight;
    }

    /// Removes an endpoint (no-op when absent).
    pub fn remove(&mut self, id: EndpointId) {
        self.endpoints.retain(|e| e.id != id);
    }

    /// The endpoints, in the order the balancer receives them.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Whether an endpoint with this id is in the pool.
    pub fn contains(&self, id: EndpointId) -> bool {
        self.endpoints.iter().any(|e| e.id == id)
    }

    fn get_mut(&mut self, id: EndpointId) -> &mut Endpoint {
        self.endpoints
            .iter_mut()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("no endpoint with id {id} in the test pool"))
    }
}

/// A fake client request; [`TestRequest::as_request`] lends it to a plugin as a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRequest {
    method: String,
    path: String,
    query: Option<String>,
    host: Option<String>,
    headers: Vec<(String, String)>,
    client_ip: IpAddr,
    request_id: String,
}

impl TestRequest {
    /// A request with this method and target (`/path` or `/path?query`), from 127.0.0.1, with
    /// request id `test-request`.
    pub fn new(method: &str, target: &str) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        TestRequest {
            method: method.to_ascii_uppercase(),
            path,
            query,
            host: None,
            headers: Vec::new(),
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            request_id: "test-request".to_owned(),
        }
    }

    /// A `GET` request for `target`.
    pub fn get(target: &str) -> Self {
        TestRequest::new("GET", target)
    }

    /// A `POST` request for `target`.
    pub fn post(target: &str) -> Self {
        TestRequest::new("POST", target)
    }

    /// Adds a header value (repeat for several values; the first one is what plugins read).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds a cookie (to a `Cookie` header, as a browser sends it).
    pub fn cookie(self, name: &str, value: &str) -> Self {
        self.header("cookie", &format!("{name}={value}"))
    }

    /// Sets the host the client asked for (the `Host` header wins when this is not set).
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_owned());
        self
    }

    /// Sets the client's address.
    pub fn client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = ip;
        self
    }

    /// Sets the request id.
    pub fn request_id(mut self, id: &str) -> Self {
        self.request_id = id.to_owned();
        self
    }

    /// Lends this request to a plugin, as the proxy does for one call.
    pub fn as_request(&self) -> Request<'_> {
        Request::from_test(self)
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl RequestSource for TestRequest {
    fn method(&self) -> String {
        self.method.clone()
    }

    fn path(&self) -> String {
        self.path.clone()
    }

    fn query(&self) -> Option<String> {
        self.query.clone()
    }

    fn host(&self) -> Option<String> {
        let raw = self
            .host
            .clone()
            .or_else(|| self.header_values("host").next().map(str::to_owned))?;
        Some(strip_port(&raw).to_owned())
    }

    fn header(&self, name: &str) -> Option<String> {
        self.header_values(name).next().map(str::to_owned)
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.header_values("cookie")
            .flat_map(|line| line.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_owned())
    }

    fn client_ip(&self) -> IpAddr {
        self.client_ip
    }

    fn request_id(&self) -> String {
        self.request_id.clone()
    }
}

/// `example.com:8080` -> `example.com`, `[::1]:80` -> `[::1]`.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    authority
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(authority, |(host, _)| host)
}

/// A fake upstream response; [`TestResponse::as_response`] lends it to a filter as a [`Response`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResponse {
    status: u16,
    headers: Vec<(String, String)>,
    endpoint: Option<EndpointId>,
    cluster: Option<String>,
}

impl TestResponse {
    /// A response with this status, no headers, and no endpoint or cluster.
    pub fn new(status: u16) -> Self {
        TestResponse {
            status,
            headers: Vec::new(),
            endpoint: None,
            cluster: None,
        }
    }

    /// Adds a header value.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the endpoint that answered.
    pub fn endpoint(mut self, id: EndpointId) -> Self {
        self.endpoint = Some(id);
        self
    }

    /// Sets the cluster that served the request.
    pub fn cluster(mut self, name: &str) -> Self {
        self.cluster = Some(name.to_owned());
        self
    }

    /// Lends this response to a filter, as the proxy does for one call.
    pub fn as_response(&self) -> Response<'_> {
        Response::from_test(self)
    }
}

impl ResponseSource for TestResponse {
    fn status(&self) -> u16 {
        self.status
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    fn endpoint(&self) -> Option<EndpointId> {
        self.endpoint
    }

    fn cluster(&self) -> Option<String> {
        self.cluster.clone()
    }
}

/// How many picks the proxy asks a balancer for at once with `pick-ahead`; the harness asks for
/// as many.
pub const PICK_AHEAD: u32 = 64;

/// Drives a [`Balancer`] the way the proxy does.
pub struct BalancerHarness<T> {
    plugin: T,
    pool: Vec<Endpoint>,
    /// Ids from `pick_ahead` not handed out yet, in reverse order (the next one last).
    ahead: Vec<EndpointId>,
    /// Whether `pick_ahead` answered an empty list for the current pool (picks go to `pick`).
    ahead_off: bool,
}

impl<T: Balancer> BalancerHarness<T> {
    /// Calls `init` with `settings` (TOML text; "" for none). The pool starts empty and the plugin
    /// has not been told about it yet: call [`set_pool`](Self::set_pool), or use
    /// [`start`](Self::start).
    pub fn init(settings: &str) -> Result<Self, String> {
        Ok(BalancerHarness {
            plugin: T::init(settings)?,
            pool: Vec::new(),
            ahead: Vec::new(),
            ahead_off: false,
        })
    }

    /// `init`, then `pool_changed` with `pool`: what the proxy does for a new instance.
    pub fn start(settings: &str, pool: &TestPool) -> Result<Self, String> {
        let mut harness = Self::init(settings)?;
        harness.set_pool(pool);
        Ok(harness)
    }

    /// Pushes a (changed) pool with `pool_changed`.
    pub fn set_pool(&mut self, pool: &TestPool) {
        self.pool = pool.endpoints().to_vec();
        self.plugin.pool_changed(&self.pool);
        self.ahead.clear();
        self.ahead_off = false;
    }

    /// A first try (attempt 1, nothing tried), as the proxy makes it: from the ids the plugin
    /// gave with [`pick_ahead`](Balancer::pick_ahead) ([`PICK_AHEAD`] at a time) while it gives
    /// some, else with `pick`.
    ///
    /// # Panics
    /// When the plugin picks an id that is not in the pool (the proxy counts that as a fault).
    pub fn pick(&mut self, req: &TestRequest) -> Option<EndpointId> {
        if self.ahead.is_empty() && !self.ahead_off {
            let ids = self.plugin.pick_ahead(PICK_AHEAD);
            assert!(
                ids.len() <= PICK_AHEAD as usize,
                "pick_ahead gave {} ids for {PICK_AHEAD} asked: the proxy counts this as a plugin fault",
                ids.len()
            );
            for id in &ids {
                self.check_in_pool(*id);
            }
            self.ahead_off = ids.is_empty();
            self.ahead = ids.into_iter().rev().collect();
        }
        match self.ahead.pop() {
            Some(id) => Some(id),
            None => self.pick_retry(req, 1, &[]),
        }
    }

    /// A pick with the given attempt number and endpoints already tried.
    ///
    /// # Panics
    /// When the plugin picks an id that is not in the pool (the proxy counts that as a fault).
    pub fn pick_retry(
        &mut self,
        req: &TestRequest,
        attempt: u32,
        tried: &[EndpointId],
    ) -> Option<EndpointId> {
        let ctx = PickContext {
            attempt,
            tried: tried.to_vec(),
        };
        let picked = self.plugin.pick(&req.as_request(), &ctx);
        if let Some(id) = picked {
            self.check_in_pool(id);
        }
        picked
    }

    fn check_in_pool(&self, id: EndpointId) {
        let endpoint = self.pool.iter().find(|e| e.id == id);
        let Some(endpoint) = endpoint else {
            panic!(
                "the balancer picked endpoint {id}, which is not in the pool: the proxy counts this as a plugin fault"
            );
        };
        assert!(
            endpoint.healthy,
            "the balancer picked endpoint {id}, which the proxy marked unhealthy: `healthy` is \
             authoritative (panic mode is the proxy's, which then marks every endpoint healthy)"
        );
    }

    /// Makes `n` first-try picks of `req` and counts how often each endpoint was chosen
    /// (`None` counts under no key; the total of the counts tells how many picks found one).
    pub fn spread(&mut self, req: &TestRequest, n: usize) -> BTreeMap<EndpointId, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            if let Some(id) = self.pick(req) {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        counts
    }

    /// The plugin instance, to inspect its state.
    pub fn plugin(&self) -> &T {
        &self.plugin
    }

    /// The plugin instance, mutably.
    pub fn plugin_mut(&mut self) -> &mut T {
        &mut self.plugin
    }
}

/// Checks what the proxy relies on when no endpoint is healthy: a balancer started with
/// `settings`, fresh or after serving `healthy` (the same endpoints, healthy) first, answers no
/// endpoint for any of `requests`: not for a first try (nor from
/// [`pick_ahead`](Balancer::pick_ahead)), a retry, or a retry with every endpoint tried. The
/// proxy then answers 503, or spreads over every endpoint if it is in panic mode, which it
/// decides alone.
///
/// # Panics
/// When the balancer picks an endpoint, naming the settings, the pool's size and the request.
pub fn assert_no_pick_when_none_healthy<T: Balancer>(
    settings: &str,
    healthy: &TestPool,
    requests: &[TestRequest],
) {
    let mut down = healthy.clone();
    let ids: Vec<EndpointId> = down.endpoints().iter().map(|e| e.id).collect();
    for id in &ids {
        down.set_healthy(*id, false);
    }
    let case = format!("settings {settings:?}, {} endpoints", ids.len());
    let start = |pool: &TestPool| {
        BalancerHarness::<T>::start(settings, pool)
            .unwrap_or_else(|e| panic!("{case}: init refused: {e}"))
    };
    let mut fresh = start(&down);
    let mut was_healthy = start(healthy);
    for req in requests {
        was_healthy.pick(req);
    }
    was_healthy.set_pool(&down);
    for (lb, instance) in [(&mut fresh, "fresh"), (&mut was_healthy, "was healthy")] {
        let ahead = lb.plugin_mut().pick_ahead(PICK_AHEAD);
        assert!(
            ahead.is_empty(),
            "{case}, {instance}: pick_ahead gave {ahead:?}"
        );
        for req in requests {
            let at = |what: &str| format!("{case}, {instance}: {what} of {req:?}");
            assert_eq!(lb.pick(req), None, "{}", at("first try"));
            let first = &ids[..ids.len().min(1)];
            assert_eq!(lb.pick_retry(req, 2, first), None, "{}", at("a retry"));
            assert_eq!(
                lb.pick_retry(req, 3, &ids),
                None,
                "{}",
                at("a retry, all tried")
            );
        }
    }
}

/// Drives a [`Router`] the way the proxy does.
pub struct RouterHarness<T> {
    plugin: T,
    clusters: ClusterNames,
}

impl<T: Router> RouterHarness<T> {
    /// Calls `init` with `settings` (TOML text; "" for none) and the proxy's cluster names.
    pub fn init(settings: &str, clusters: &[&str]) -> Result<Self, String> {
        let clusters: Vec<String> = clusters.iter().map(|c| c.to_string()).collect();
        Ok(RouterHarness {
            plugin: T::init(settings, &clusters)?,
            clusters: ClusterNames::new(clusters),
        })
    }

    /// Routes one request, and returns the decision as the proxy acts on it: a cluster always
    /// by name ([`RouteDecision::ClusterIndex`] answers are shown as the cluster's name), and an
    /// unknown name or an index outside the list as the 502 answer the proxy gives.
    pub fn route(&mut self, req: &TestRequest) -> RouteDecision {
        match self.clusters.resolve(self.plugin.route(&req.as_request())) {
            Resolved::Cluster(i) => {
                RouteDecision::Cluster(self.clusters.names()[i as usize].clone())
            }
            Resolved::Respond(answer) => RouteDecision::Respond(answer),
        }
    }

    /// The plugin instance.
    pub fn plugin(&self) -> &T {
        &self.plugin
    }
}

/// Drives a [`Filter`] the way the proxy does.
pub struct FilterHarness<T> {
    plugin: T,
}

impl<T: Filter> FilterHarness<T> {
    /// Calls `init` with `settings` (TOML text; "" for none).
    pub fn init(settings: &str) -> Result<Self, String> {
        Ok(FilterHarness {
            plugin: T::init(settings)?,
        })
    }

    /// Runs the request hook.
    pub fn on_request(&mut self, req: &TestRequest) -> RequestAction {
        self.plugin.on_request(&req.as_request())
    }

    /// Runs the response hook.
    pub fn on_response(&mut self, req: &TestRequest, resp: &TestResponse) -> Vec<HeaderOp> {
        self.plugin
            .on_response(&req.as_request(), &resp.as_response())
    }

    /// The plugin instance.
    pub fn plugin(&self) -> &T {
        &self.plugin
    }
}

/// Drives a [`HealthPolicy`] the way the proxy does.
pub struct HealthHarness<T> {
    plugin: T,
}

impl<T: HealthPolicy> HealthHarness<T> {
    /// Calls `init` with `settings` (TOML text; "" for none).
    pub fn init(settings: &str) -> Result<Self, String> {
        Ok(HealthHarness {
            plugin: T::init(settings)?,
        })
    }

    /// Judges a probe result.
    pub fn judge_probe(&mut self, result: &ProbeResult) -> Verdict {
        self.plugin.judge_probe(result)
    }

    /// Judges a request outcome.
    pub fn observe(&mut self, outcome: &Outcome) -> Verdict {
        self.plugin.observe(outcome)
    }

    /// The plugin instance.
    pub fn plugin(&self) -> &T {
        &self.plugin
    }
}

// By hand, so `unwrap_err()` on `init` works for plugin types that are not `Debug`.
impl<T> std::fmt::Debug for BalancerHarness<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancerHarness")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

// By hand, so `unwrap_err()` on `init` works for plugin types that are not `Debug`.
impl<T> std::fmt::Debug for RouterHarness<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterHarness").finish_non_exhaustive()
    }
}

// By hand, so `unwrap_err()` on `init` works for plugin types that are not `Debug`.
impl<T> std::fmt::Debug for FilterHarness<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterHarness").finish_non_exhaustive()
    }
}

// By hand, so `unwrap_err()` on `init` works for plugin types that are not `Debug`.
impl<T> std::fmt::Debug for HealthHarness<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthHarness").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host;
    use std::net::Ipv6Addr;

    #[test]
    fn request_fields_read_like_the_proxy_gives_them() {
        let req = TestRequest::new("post", "/a/b?x=1&y=2")
            .header("Host", "example.com:8080")
            .header("X-Multi", "first")
            .header("x-multi", "second")
            .request_id("r-42");
        let r = req.as_request();
        assert_eq!(r.method(), "POST");
        assert_eq!(r.path(), "/a/b");
        assert_eq!(r.path_cow(), "/a/b");
        assert_eq!(r.query().as_deref(), Some("x=1&y=2"));
        assert_eq!(r.host().as_deref(), Some("example.com"));
        assert_eq!(r.header("X-MULTI").as_deref(), Some("first"));
        assert_eq!(r.header("absent"), None);
        assert_eq!(r.request_id(), "r-42");
        assert_eq!(r.client_ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(TestRequest::get("/").as_request().query(), None);
        assert_eq!(TestRequest::get("/").as_request().host(), None);
    }

    #[test]
    fn host_strips_the_port_and_explicit_host_wins() {
        let v6 = TestRequest::get("/").header("host", "[::1]:443");
        assert_eq!(v6.as_request().host().as_deref(), Some("[::1]"));
        let plain = TestRequest::get("/").header("host", "example.com");
        assert_eq!(plain.as_request().host().as_deref(), Some("example.com"));
        let both = TestRequest::get("/")
            .header("host", "a.test")
            .host("b.test:81");
        assert_eq!(both.as_request().host().as_deref(), Some("b.test"));
    }

    #[test]
    fn cookies_come_from_every_cookie_header() {
        let req = TestRequest::get("/")
            .header("Cookie", "a=1; session=abc")
            .cookie("theme", "dark");
        let r = req.as_request();
        assert_eq!(r.cookie("session").as_deref(), Some("abc"));
        assert_eq!(r.cookie("a").as_deref(), Some("1"));
        assert_eq!(r.cookie("theme").as_deref(), Some("dark"));
        assert_eq!(r.cookie("sess"), None);
    }

    #[test]
    fn client_ip_is_settable() {
        let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
        assert_eq!(
            TestRequest::get("/").client_ip(ip).as_request().client_ip(),
            ip
        );
    }

    #[test]
    fn response_fields() {
        let resp = TestResponse::new(502)
            .header("Retry-After", "3")
            .endpoint(4)
            .cluster("api");
        let r = resp.as_response();
        assert_eq!(r.status(), 502);
        assert_eq!(r.header("retry-after").as_deref(), Some("3"));
        assert_eq!(r.endpoint(), Some(4));
        assert_eq!(r.cluster().as_deref(), Some("api"));
        let bare = TestResponse::new(200);
        assert_eq!(
            (bare.as_response().endpoint(), bare.as_response().cluster()),
            (None, None)
        );
    }

    #[test]
    fn host_functions_read_and_record_thread_state() {
        reset();
        assert_eq!((host::in_flight(3), host::latency_ewma_micros(3)), (0, 0));
        set_in_flight(3, 7);
        set_latency(3, 1500);
        assert_eq!(
            (host::in_flight(3), host::latency_ewma_micros(3)),
            (7, 1500)
        );

        host::info("hello");
        host::log(Level::Trace, "fine");
        assert_eq!(
            logs(),
            [
                (Level::Info, "hello".to_owned()),
                (Level::Trace, "fine".to_owned())
            ]
        );
        assert_eq!(take_logs().len(), 2);
        assert!(logs().is_empty());

        host::counter_add("hits", 2);
        host::counter_add("hits", 3);
        assert_eq!(counter("hits"), 5);
        assert_eq!(
            counters().into_iter().collect::<Vec<_>>(),
            [("hits".to_owned(), 5)]
        );

        let t0 = host::now_nanos();
        advance_clock(250);
        assert_eq!(host::now_nanos() - t0, 250);

        seed_random(9);
        let a = (host::random_u64(), host::random_u64());
        seed_random(9);
        let b = (host::random_u64(), host::random_u64());
        assert_eq!(a, b);
        assert_ne!(a.0, a.1);

        reset();
        assert_eq!(
            (host::in_flight(3), counter("hits"), host::now_nanos()),
            (0, 0, 0)
        );
    }

    #[test]
    fn pool_builder_gives_ids_in_order() {
        let mut pool = TestPool::new()
            .endpoint("10.0.0.1:80", 2)
            .meta("zone", "a")
            .endpoint_with_id(10, "10.0.0.10:80", 1)
            .unhealthy("10.0.0.11:80", 1);
        let ids: Vec<_> = pool.endpoints().iter().map(|e| e.id).collect();
        assert_eq!(ids, [0, 10, 11]);
        assert_eq!(pool.endpoints()[0].meta("zone"), Some("a"));
        assert_eq!(pool.endpoints()[0].meta("rack"), None);
        assert!(!pool.endpoints()[2].healthy);
        pool.set_weight(0, 5);
        pool.set_healthy(11, true);
        pool.remove(10);
        assert!(!pool.contains(10));
        assert_eq!(pool.endpoints()[0].weight, 5);
        assert!(pool.endpoints().iter().all(|e| e.healthy));
    }

    /// Records what the harness hands it; picks whatever it is told to.
    struct Recorder {
        settings: String,
        pools: Vec<Vec<EndpointId>>,
        contexts: Vec<PickContext>,
        answer: Option<EndpointId>,
        /// What `pick_ahead` answers, and the counts it was asked for.
        ahead: Vec<EndpointId>,
        ahead_asks: Vec<u32>,
    }

    impl Balancer for Recorder {
        fn init(config: &str) -> Result<Self, String> {
            Ok(Recorder {
                settings: config.to_owned(),
                pools: Vec::new(),
                contexts: Vec::new(),
                answer: None,
                ahead: Vec::new(),
                ahead_asks: Vec::new(),
            })
        }

        fn pool_changed(&mut self, endpoints: &[Endpoint]) {
            self.pools.push(endpoints.iter().map(|e| e.id).collect());
        }

        fn pick(&mut self, _req: &Request<'_>, ctx: &PickContext) -> Option<EndpointId> {
            self.contexts.push(ctx.clone());
            self.answer
        }

        fn pick_ahead(&mut self, count: u32) -> Vec<EndpointId> {
            self.ahead_asks.push(count);
            self.ahead.clone()
        }
    }

    #[test]
    #[should_panic(expected = "which the proxy marked unhealthy")]
    fn the_harness_refuses_a_pick_of_an_unhealthy_endpoint() {
        let pool = TestPool::new().endpoint("a:1", 1).unhealthy("b:1", 1);
        let mut lb = BalancerHarness::<Recorder>::start("", &pool).unwrap();
        lb.plugin_mut().answer = Some(1);
        lb.pick_retry(&TestRequest::get("/"), 2, &[0]);
    }

    #[test]
    fn no_pick_when_none_healthy_is_checked_for_first_tries_retries_and_picks_ahead() {
        let healthy = TestPool::new().endpoint("a:1", 1).endpoint("b:1", 1);
        // The recorder answers none: it passes.
        assert_no_pick_when_none_healthy::<Recorder>("", &healthy, &[TestRequest::get("/")]);
        // A balancer that still picks is caught, whatever the endpoint's health.
        let caught = std::panic::catch_unwind(|| {
            struct Always;
            impl Balancer for Always {
                fn init(_: &str) -> Result<Self, String> {
                    Ok(Always)
                }
                fn pool_changed(&mut self, _: &[Endpoint]) {}
                fn pick(&mut self, _: &Request<'_>, _: &PickContext) -> Option<EndpointId> {
                    Some(0)
                }
            }
            assert_no_pick_when_none_healthy::<Always>("", &healthy, &[TestRequest::get("/")]);
        });
        assert!(caught.is_err());
    }

    #[test]
    fn balancer_harness_serves_first_tries_from_picks_made_ahead() {
        let pool = TestPool::new().endpoint("a:1", 1).endpoint("b:1", 1);
        let mut lb = BalancerHarness::<Recorder>::start("", &pool).unwrap();
        lb.plugin_mut().answer = Some(0);
        lb.plugin_mut().ahead = vec![1, 0, 1];
        let req = TestRequest::get("/");
        let firsts: Vec<_> = (0..4).map(|_| lb.pick(&req)).collect();
        assert_eq!(firsts, [Some(1), Some(0), Some(1), Some(1)]);
        assert_eq!(lb.plugin().ahead_asks, [PICK_AHEAD, PICK_AHEAD]);
        assert!(lb.plugin().contexts.is_empty(), "no pick for first tries");
        assert_eq!(lb.pick_retry(&req, 2, &[1]), Some(0));
        // A pool change drops the two ids left; a plugin that then declines is asked per request.
        lb.plugin_mut().ahead.clear();
        lb.set_pool(&pool);
        assert_eq!(lb.spread(&req, 3).get(&0), Some(&3));
        assert_eq!(
            lb.plugin().ahead_asks.len(),
            3,
            "asked once after the change"
        );
        assert_eq!(lb.plugin().contexts.len(), 4);
    }

    #[test]
    #[should_panic(expected = "not in the pool")]
    fn picking_ahead_outside_the_pool_is_a_fault() {
        let pool = TestPool::new().endpoint("a:1", 1);
        let mut lb = BalancerHarness::<Recorder>::start("", &pool).unwrap();
        lb.plugin_mut().ahead = vec![0, 9];
        lb.pick(&TestRequest::get("/"));
    }

    #[test]
    fn balancer_harness_calls_like_the_proxy() {
        let pool = TestPool::new().endpoint("a:1", 1).endpoint("b:1", 1);
        let mut lb = BalancerHarness::<Recorder>::start("k = 1", &pool).unwrap();
        lb.plugin_mut().answer = Some(1);
        assert_eq!(lb.pick(&TestRequest::get("/")), Some(1));
        assert_eq!(lb.pick_retry(&TestRequest::get("/"), 3, &[0, 1]), Some(1));
        assert_eq!(lb.spread(&TestRequest::get("/"), 4).get(&1), Some(&4));
        let rec = lb.plugin();
        assert_eq!(rec.settings, "k = 1");
        assert_eq!(rec.pools, [vec![0, 1]]);
        assert_eq!(
            rec.contexts[..2],
            [
                PickContext {
                    attempt: 1,
                    tried: vec![]
                },
                PickContext {
                    attempt: 3,
                    tried: vec![0, 1]
                }
            ]
        );
        assert!(rec.contexts[1].was_tried(0) && !rec.contexts[0].was_tried(0));
    }

    #[test]
    #[should_panic(expected = "not in the pool")]
    fn picking_outside_the_pool_is_a_fault() {
        let pool = TestPool::new().endpoint("a:1", 1);
        let mut lb = BalancerHarness::<Recorder>::start("", &pool).unwrap();
        lb.plugin_mut().answer = Some(9);
        lb.pick(&TestRequest::get("/"));
    }

    struct Defaults;

    impl Filter for Defaults {
        fn init(_config: &str) -> Result<Self, String> {
            Ok(Defaults)
        }
    }

    impl HealthPolicy for Defaults {
        fn init(_config: &str) -> Result<Self, String> {
            Ok(Defaults)
        }
    }

    #[test]
    fn trait_defaults_change_nothing() {
        let mut f = FilterHarness::<Defaults>::init("").unwrap();
        let req = TestRequest::get("/");
        assert_eq!(f.on_request(&req), RequestAction::proceed());
        assert!(f.on_response(&req, &TestResponse::new(200)).is_empty());

        let mut h = HealthHarness::<Defaults>::init("").unwrap();
        let outcome = Outcome {
            endpoint: 1,
            status: Some(500),
            failure: None,
            duration_micros: 1,
        };
        assert_eq!(h.observe(&outcome), Verdict::Abstain);
        let probe = ProbeResult {
            endpoint: 1,
            status: None,
            headers: vec![],
            body_prefix: vec![],
            failure: Some(crate::Failure::Timeout),
            duration_micros: 1,
        };
        assert_eq!(h.judge_probe(&probe), Verdict::Abstain);
    }
}
