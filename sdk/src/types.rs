//! The plain Rust values that cross between the proxy and a plugin: pool members, pick context,
//! local responses, header changes, and the health inputs and verdicts.

/// Stable numeric id of an endpoint within one cluster. An endpoint keeps its id for as long as
/// it stays in the pool, so ids are safe keys for state kept between pool changes.
pub type EndpointId = u32;

/// One member of a cluster's pool, as pushed to [`Balancer::pool_changed`](crate::Balancer::pool_changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Stable id; what [`Balancer::pick`](crate::Balancer::pick) returns.
    pub id: EndpointId,
    /// `host:port` as configured.
    pub address: String,
    /// Relative weight, at least 1.
    pub weight: u32,
    /// Whether the proxy currently considers the endpoint healthy, and so whether a balancer may
    /// pick it. Authoritative: pick only healthy endpoints, and answer `None` when none is (the
    /// proxy answers 503). Panic mode is the proxy's alone: while the cluster is in panic (below
    /// its `panic_threshold`, with the default `panic_action = "spread"`) the proxy sends every
    /// endpoint with `healthy` set, so a balancer never falls back to unhealthy endpoints itself.
    pub healthy: bool,
    /// Free-form `key = value` pairs from the config (zone, version, ...).
    pub metadata: Vec<(String, String)>,
}

impl Endpoint {
    /// The value of a metadata key, if the config set one.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Context of one pick: which try this is and which endpoints already failed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PickContext {
    /// 1 for the first try, 2 for the first retry, ...
    pub attempt: u32,
    /// Endpoints already tried for this request; pick another one if you can.
    pub tried: Vec<EndpointId>,
}

impl PickContext {
    /// Whether `id` was already tried for this request.
    pub fn was_tried(&self, id: EndpointId) -> bool {
        self.tried.contains(&id)
    }
}

/// A response a plugin produces instead of forwarding the request (redirect, 403, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    /// The status code.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        LocalResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain` response with this status and body.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        LocalResponse::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(body.into().into_bytes())
    }

    /// A `302 Found` redirect to `location`.
    pub fn redirect(location: impl Into<String>) -> Self {
        LocalResponse::redirect_with(302, location)
    }

    /// A redirect with a chosen status (301, 302, 303, 307 or 308) to `location`.
    pub fn redirect_with(status: u16, location: impl Into<String>) -> Self {
        LocalResponse::new(status).header("location", location)
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// A change to a request's or response's headers; the proxy applies them in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderOp {
    /// Replace every value of the header (name, value) with this one.
    Set(String, String),
    /// Add one more value (name, value).
    Append(String, String),
    /// Remove every value of the header.
    Remove(String),
}

impl HeaderOp {
    /// [`HeaderOp::Set`] from anything string-like.
    pub fn set(name: impl Into<String>, value: impl Into<String>) -> Self {
        HeaderOp::Set(name.into(), value.into())
    }

    /// [`HeaderOp::Append`] from anything string-like.
    pub fn append(name: impl Into<String>, value: impl Into<String>) -> Self {
        HeaderOp::Append(name.into(), value.into())
    }

    /// [`HeaderOp::Remove`] from anything string-like.
    pub fn remove(name: impl Into<String>) -> Self {
        HeaderOp::Remove(name.into())
    }
}

/// A router's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteDecision {
    /// Forward to the named cluster. The SDK looks the name up in the cluster list
    /// [`Router::init`](crate::Router::init) was given; a name that is not there is logged and
    /// answered 502 with the reason.
    Cluster(String),
    /// Forward to the cluster at this index of the list [`Router::init`](crate::Router::init) was
    /// given: what a router that resolved its cluster names in `init` answers, with no lookup or
    /// string per request. An index outside the list is logged and answered 502.
    ClusterIndex(u32),
    /// Answer the client directly.
    Respond(LocalResponse),
}

impl RouteDecision {
    /// [`RouteDecision::Cluster`] from anything string-like.
    pub fn cluster(name: impl Into<String>) -> Self {
        RouteDecision::Cluster(name.into())
    }
}

/// A request filter's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestAction {
    /// Apply these header changes (possibly none) and go on.
    Proceed(Vec<HeaderOp>),
    /// Answer the client directly; routing and later filters are skipped.
    Respond(LocalResponse),
}

impl RequestAction {
    /// Go on without changes.
    pub fn proceed() -> Self {
        RequestAction::Proceed(Vec::new())
    }
}

/// How a probe or a request failed before a status was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The connection could not be made.
    Connect,
    /// The connection was reset.
    Reset,
    /// No answer in time.
    Timeout,
    /// The answer was not valid HTTP.
    Protocol,
}

/// The result of one active health probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    /// The probed endpoint.
    pub endpoint: EndpointId,
    /// The status, when a response arrived.
    pub status: Option<u16>,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// The first bytes of the body, at most the configured prefix size.
    pub body_prefix: Vec<u8>,
    /// Why no response arrived.
    pub failure: Option<Failure>,
    /// How long the probe took.
    pub duration_micros: u64,
}

/// The outcome of one real request to an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The endpoint that was tried.
    pub endpoint: EndpointId,
    /// The status, when a response arrived.
    pub status: Option<u16>,
    /// Why no response arrived.
    pub failure: Option<Failure>,
    /// How long the request took.
    pub duration_micros: u64,
}

/// A health judgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Counts as a success toward the rise threshold.
    Pass,
    /// Counts as a failure toward the fall threshold.
    Fail,
    /// Take the endpoint out now (passive ejection).
    Eject,
    /// No opinion: the proxy's own rule decides.
    Abstain,
}

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected but handled.
    Warn,
    /// Something failed.
    Error,
}
