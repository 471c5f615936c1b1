//! Test plugin: a balancer that answers `pick-ahead` with the lowest id of its pool and `pick` with
//! the highest, so a test tells which of the two the host used. Its settings choose a misbehaviour
//! for `pick-ahead` (one line, `ahead = "..."`, checked by hand to keep a TOML parser out):
//! `"lowest"` (the default: `count` times the lowest id), `"none"` (an empty list: pick per
//! request), `"outside"` (an id not in the pool), `"too-many"` (`count + 1` ids).

use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request};

/// What `pick-ahead` answers.
#[derive(Clone, Copy)]
enum Ahead {
    Lowest,
    None,
    Outside,
    TooMany,
}

/// The pool's lowest and highest ids and the chosen behaviour.
pub struct PickAhead {
    ahead: Ahead,
    lowest: Option<EndpointId>,
    highest: Option<EndpointId>,
}

impl Balancer for PickAhead {
    fn init(config: &str) -> Result<Self, String> {
        let ahead = match config.trim() {
            "" | r#"ahead = "lowest""# => Ahead::Lowest,
            r#"ahead = "none""# => Ahead::None,
            r#"ahead = "outside""# => Ahead::Outside,
            r#"ahead = "too-many""# => Ahead::TooMany,
            other => return Err(format!("unknown settings `{other}`")),
        };
        Ok(PickAhead {
            ahead,
            lowest: None,
            highest: None,
        })
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        self.lowest = endpoints.iter().map(|e| e.id).min();
        self.highest = endpoints.iter().map(|e| e.id).max();
    }

    fn pick(&mut self, _req: &Request, _ctx: &PickContext) -> Option<EndpointId> {
        self.highest
    }

    fn pick_ahead(&mut self, count: u32) -> Vec<EndpointId> {
        let Some(lowest) = self.lowest else {
            return Vec::new();
        };
        match self.ahead {
            Ahead::Lowest => vec![lowest; count as usize],
            Ahead::None => Vec::new(),
            Ahead::Outside => vec![lowest, 9999],
            Ahead::TooMany => vec![lowest; count as usize + 1],
        }
    }
}

sluicegate_sdk::export_balancer!(PickAhead);
