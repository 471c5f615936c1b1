//! The balancer half: follows the cookie to its endpoint when that endpoint can serve, else
//! round-robin over the healthy untried endpoints (the filter then re-pins the client).
//!
//! Only endpoints the proxy sends as healthy are picked, whatever the cookie says: a cookie
//! naming an unhealthy endpoint is not followed, and with no healthy endpoint a pick gives `None`
//! (the proxy answers 503). Panic mode is the proxy's alone: while a cluster is in panic it sends
//! every endpoint as healthy, and cookies are then followed to any of them.

use std::collections::HashMap;

use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request, host};

use crate::Settings;

/// Sticky balancer state: the cookie table and the round-robin fallback.
#[derive(Debug)]
pub struct StickyBalancer {
    settings: Settings,
    /// Cookie value -> endpoint, for every endpoint that may be picked now (the healthy ones).
    by_value: HashMap<String, EndpointId>,
    /// The endpoints picks choose from: the healthy ones (none when none is healthy).
    candidates: Vec<EndpointId>,
    /// Index into `candidates` of the next fallback pick.
    next: usize,
}

impl StickyBalancer {
    /// The cookie value that pins a client to `id` (what the filter half sets).
    pub fn cookie_value(&self, id: EndpointId) -> String {
        self.settings.cookie_value(id)
    }

    /// The endpoint the request's cookie pins it to, if that endpoint can serve this try.
    fn pinned(&self, req: &Request<'_>, ctx: &PickContext) -> Option<Option<EndpointId>> {
        let value = req.cookie(&self.settings.cookie)?;
        Some(
            self.by_value
                .get(&value)
                .copied()
                .filter(|id| !ctx.was_tried(*id)),
        )
    }

    fn round_robin(&mut self, ctx: &PickContext) -> Option<EndpointId> {
        let n = self.candidates.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        self.next = (start + 1) % n;
        let in_turn = |i: usize| self.candidates[(start + i) % n];
        let untried = (0..n).map(in_turn).find(|id| !ctx.was_tried(*id));
        Some(untried.unwrap_or_else(|| in_turn(0)))
    }
}

impl Balancer for StickyBalancer {
    fn init(config: &str) -> Result<Self, String> {
        Ok(StickyBalancer {
            settings: Settings::parse(config)?,
            by_value: HashMap::new(),
            candidates: Vec::new(),
            next: 0,
        })
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        self.candidates = endpoints
            .iter()
            .filter(|e| e.healthy)
            .map(|e| e.id)
            .collect();
        self.by_value = self
            .candidates
            .iter()
            .map(|id| (self.settings.cookie_value(*id), *id))
            .collect();
    }

    fn pick(&mut self, req: &Request<'_>, ctx: &PickContext) -> Option<EndpointId> {
        match self.pinned(req, ctx) {
            Some(Some(id)) => Some(id),
            Some(None) => {
                // A cookie that cannot be followed: its endpoint left, is down, or just failed.
                // Another healthy endpoint, or none at all: never the unhealthy one.
                host::counter_add("sticky_repin", 1);
                self.round_robin(ctx)
            }
            None => self.round_robin(ctx),
        }
    }
}
