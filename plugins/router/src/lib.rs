//! The default router: ordered rules from the settings choose a cluster, a weighted split, a
//! redirect or a local answer for each request.
//!
#![doc = include_str!("../README.md")]

mod rules;
mod settings;

use sluicegate_sdk::{LocalResponse, Request, RouteDecision, Router};

pub use settings::SettingsError;

use rules::{Rule, View};
use settings::RawSettings;

/// The rule router: the compiled rules and where unmatched requests go.
#[derive(Debug)]
pub struct RuleRouter {
    rules: Vec<Rule>,
    /// Its index in the proxy's cluster list.
    default_cluster: Option<u32>,
}

impl RuleRouter {
    /// Parses and checks the settings (the TOML described in the crate docs) against the proxy's
    /// cluster names, which the rules' clusters must be.
    pub fn from_settings(config: &str, clusters: &[String]) -> Result<Self, String> {
        let raw: RawSettings = sluicegate_sdk::settings(config)?;
        let compiled = raw.compile(clusters).map_err(|e| e.to_string())?;
        Ok(RuleRouter {
            rules: compiled.rules,
            default_cluster: compiled.default_cluster,
        })
    }

    /// How many rules the settings hold.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

impl Router for RuleRouter {
    fn init(config: &str, clusters: &[String]) -> Result<Self, String> {
        RuleRouter::from_settings(config, clusters)
    }

    fn route(&mut self, req: &Request<'_>) -> RouteDecision {
        let mut view = View::new(*req);
        match self.rules.iter().find(|r| r.matches(&mut view)) {
            Some(rule) => rule.action.decide(&mut view),
            None => match self.default_cluster {
                Some(i) => RouteDecision::ClusterIndex(i),
                None => RouteDecision::Respond(LocalResponse::text(404, "no route\n")),
            },
        }
    }
}

sluicegate_sdk::export_router!(RuleRouter);

#[cfg(test)]
mod tests;
