//! The filter half: on each response, pins the client to the endpoint that answered by setting
//! the cookie, unless the request already carried the cookie for that very endpoint.

use std::collections::HashMap;

use sluicegate_sdk::{EndpointId, Filter, HeaderOp, Request, Response};

use crate::Settings;

/// Past this many cached values the cache starts over (ids are bounded by the pools, so this
/// only matters when one filter serves many clusters).
const CACHE_LIMIT: usize = 4096;

/// Sticky filter state: the settings and the cookie values computed so far.
#[derive(Debug)]
pub struct StickyFilter {
    settings: Settings,
    values: HashMap<EndpointId, String>,
}

impl StickyFilter {
    fn value(&mut self, id: EndpointId) -> &str {
        if self.values.len() >= CACHE_LIMIT && !self.values.contains_key(&id) {
            self.values.clear();
        }
        let settings = &self.settings;
        self.values
            .entry(id)
            .or_insert_with(|| settings.cookie_value(id))
    }
}

impl Filter for StickyFilter {
    fn init(config: &str) -> Result<Self, String> {
        Ok(StickyFilter {
            settings: Settings::parse(config)?,
            values: HashMap::new(),
        })
    }

    fn on_response(&mut self, req: &Request<'_>, resp: &Response<'_>) -> Vec<HeaderOp> {
        let Some(id) = resp.endpoint() else {
            return Vec::new(); // a local answer: nothing to pin to
        };
        if let Some(want) = &self.settings.cluster
            && resp.cluster().as_deref() != Some(want.as_str())
        {
            return Vec::new();
        }
        let value = self.value(id).to_owned();
        if req.cookie(&self.settings.cookie).as_deref() == Some(value.as_str()) {
            return Vec::new();
        }
        vec![HeaderOp::append(
            "set-cookie",
            self.settings.set_cookie(&value),
        )]
    }
}
