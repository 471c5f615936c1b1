//! The compiled routing rules: what a rule matches and what it does, checked once in `init`
//! so that routing a request only compares strings.

use std::borrow::Cow;

use regex_lite::Regex;
use sluicegate_sdk::{LocalResponse, Request, RouteDecision, host};

/// One rule: every condition set must match; the first matching rule decides.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) conditions: Conditions,
    pub(crate) action: Action,
}

/// The conditions of a rule; unset ones match everything.
#[derive(Debug, Default)]
pub(crate) struct Conditions {
    pub(crate) host: Option<HostMatch>,
    pub(crate) path: Option<PathMatch>,
    /// Upper-case methods; empty matches any method.
    pub(crate) methods: Vec<String>,
    pub(crate) headers: Vec<Pair>,
    pub(crate) cookies: Vec<Pair>,
}

/// How the requested host is matched (case-insensitively; the host has no port).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HostMatch {
    /// The whole host, lower case.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any host ending with it and with at least one
    /// character before it (so not `example.com` itself).
    Suffix(String),
}

/// How the path (without the query string, as received) is matched.
#[derive(Debug)]
pub(crate) enum PathMatch {
    Exact(String),
    /// A plain string prefix: `/api` also matches `/apis`; write `/api/` to mean the folder.
    Prefix(String),
    /// Searched anywhere in the path unless anchored with `^` / `$`.
    Regex(Regex),
}

/// A header or cookie condition: present, or present with exactly this value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pair {
    pub(crate) name: String,
    pub(crate) equals: Option<String>,
}

/// What a matching rule does.
#[derive(Debug)]
pub(crate) enum Action {
    /// Index into the proxy's cluster list.
    Cluster(u32),
    Split(Split),
    Redirect(Redirect),
    Respond(LocalResponse),
}

/// A weighted choice between clusters.
#[derive(Debug)]
pub(crate) struct Split {
    /// Clusters with the running total of weights up to and including each (weight-0 entries
    /// are dropped at init).
    pub(crate) targets: Vec<(u32, u64)>,
    /// The sum of the weights, at least 1.
    pub(crate) total: u64,
    pub(crate) on: SplitKey,
}

/// What the split's draw is taken from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SplitKey {
    /// `host::random_u64`: every request drawn afresh.
    Random,
    /// A hash of the request id: the same id always lands on the same cluster.
    RequestId,
    /// A hash of this header's value (random when absent): a client stays on one side.
    Header(String),
    /// A hash of this cookie's value (random when absent).
    Cookie(String),
}

/// A redirect answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Redirect {
    pub(crate) status: u16,
    pub(crate) location: String,
    /// Append the request's path to `location` (whose trailing `/` is dropped first).
    pub(crate) keep_path: bool,
    /// Append `?query` when the request had one.
    pub(crate) keep_query: bool,
}

/// The request as the rules read it: each field crosses from the proxy at most once per call.
pub(crate) struct View<'a> {
    req: Request<'a>,
    method: Option<String>,
    path: Option<Cow<'a, str>>,
    host: Option<Option<String>>,
}

impl<'a> View<'a> {
    pub(crate) fn new(req: Request<'a>) -> Self {
        View {
            req,
            method: None,
            path: None,
            host: None,
        }
    }

    fn method(&mut self) -> &str {
        self.method.get_or_insert_with(|| self.req.method())
    }

    fn path(&mut self) -> &str {
        self.path.get_or_insert_with(|| self.req.path_cow())
    }

    fn host(&mut self) -> Option<&str> {
        self.host
            .get_or_insert_with(|| {
                self.req
                    .host()
                    .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            })
            .as_deref()
    }
}

impl Rule {
    /// Whether every condition of the rule holds for the request. Cheap checks go first so a
    /// rule that fails on the method does not copy headers across.
    pub(crate) fn matches(&self, view: &mut View<'_>) -> bool {
        let c = &self.conditions;
        if !c.methods.is_empty() {
            let method = view.method();
            if !c.methods.iter().any(|m| m == method) {
                return false;
            }
        }
        if let Some(want) = &c.host {
            let Some(host) = view.host() else {
                return false;
            };
            let ok = match want {
                HostMatch::Exact(h) => host == h,
                HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            };
            if !ok {
                return false;
            }
        }
        if let Some(want) = &c.path {
            let path = view.path();
            let ok = match want {
                PathMatch::Exact(p) => path == p,
                PathMatch::Prefix(p) => path.starts_with(p.as_str()),
                PathMatch::Regex(r) => r.is_match(path),
            };
            if !ok {
                return false;
            }
        }
        let req = view.req;
        c.headers
            .iter()
            .all(|p| p.holds(req.header(&p.name).as_deref()))
            && c.cookies
                .iter()
                .all(|p| p.holds(req.cookie(&p.name).as_deref()))
    }
}

impl Pair {
    fn holds(&self, value: Option<&str>) -> bool {
        match (&self.equals, value) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(want), Some(v)) => want == v,
        }
    }
}

impl Action {
    /// The decision for a request this rule matched.
    pub(crate) fn decide(&self, view: &mut View<'_>) -> RouteDecision {
        match self {
            Action::Cluster(i) => RouteDecision::ClusterIndex(*i),
            Action::Split(split) => RouteDecision::ClusterIndex(split.choose(view.req)),
            Action::Redirect(r) => RouteDecision::Respond(r.answer(view)),
            Action::Respond(resp) => RouteDecision::Respond(resp.clone()),
        }
    }
}

impl Split {
    /// Picks a cluster with probability weight / total.
    pub(crate) fn choose(&self, req: Request<'_>) -> u32 {
        let keyed = match &self.on {
            SplitKey::Random => None,
            SplitKey::RequestId => Some(req.request_id()),
            SplitKey::Header(name) => req.header(name),
            SplitKey::Cookie(name) => req.cookie(name),
        };
        let draw = keyed.map_or_else(host::random_u64, |k| hash64(k.as_bytes())) % self.total;
        self.pick(draw)
    }

    /// The cluster whose weight range holds `draw` (in `0..total`).
    pub(crate) fn pick(&self, draw: u64) -> u32 {
        let i = self.targets.partition_point(|(_, upto)| *upto <= draw);
        // `draw < total` = the last running total, so `i` is in range; the fallback is defensive.
        self.targets.get(i).unwrap_or(&self.targets[0]).0
    }
}

impl Redirect {
    fn answer(&self, view: &mut View<'_>) -> LocalResponse {
        let mut location = self.location.clone();
        if self.keep_path {
            let trimmed = location.trim_end_matches('/').len();
            location.truncate(trimmed);
            location.push_str(view.path());
        }
        if self.keep_query
            && let Some(q) = view.req.query()
        {
            location.push(if location.contains('?') { '&' } else { '?' });
            location.push_str(&q);
        }
        LocalResponse::redirect_with(self.status, location)
    }
}

/// FNV-1a over the bytes, then the splitmix64 finaliser so that keys differing only in the last
/// byte still spread over the whole range (FNV alone leaves the high bits correlated).
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
