//! A config built into what serves requests: the route table or router plugin, the filters, and the
//! clusters with their balancers and pools. A reload builds a new one and swaps it in whole.

use crate::config::{Config, ConfigError, Routing};
use crate::metrics::Metrics;
use crate::plugin::{FilterHandle, PluginRuntime, RouterHandle};
use crate::routes::RouteTable;
use crate::upstream::{Cluster, plugin_error};
use std::collections::HashMap;
use std::sync::Arc;

/// How a request finds its cluster.
#[derive(Clone)]
pub enum Router {
    /// The host's route table.
    Table(RouteTable),
    /// A router plugin.
    Plugin(RouterHandle),
}

/// Everything a request needs, built from one config.
pub struct Gateway {
    /// The config it was built from.
    pub config: Config,
    /// Routing.
    pub router: Router,
    /// Filters in config order.
    pub filters: Vec<FilterHandle>,
    /// Clusters in config order.
    pub clusters: Vec<Arc<Cluster>>,
    by_name: HashMap<String, usize>,
}

impl Gateway {
    /// Builds the gateway: creates every plugin use through the runtime (so each plugin's `init`
    /// runs with its settings). Any failure names the config line of the plugin.
    pub fn build(
        config: Config,
        runtime: &PluginRuntime,
        metrics: &Metrics,
    ) -> Result<Gateway, ConfigError> {
        Self::build_from(config, runtime, metrics, None)
    }

    /// Like [`Gateway::build`], for a reload: endpoints of `previous`'s clusters that stay (same
    /// cluster name and address) keep their health state.
    pub fn build_from(
        config: Config,
        runtime: &PluginRuntime,
        metrics: &Metrics,
        previous: Option<&Gateway>,
    ) -> Result<Gateway, ConfigError> {
        // Certificate files are read here so `check` and reloads refuse bad ones; the listeners
        // load their own copies (and follow file changes), see [`crate::tls`].
        crate::tls::check_listeners(&config)?;
        let file = config.file.as_str();
        let clusters = config
            .clusters
            .iter()
            .map(|c| {
                let old = previous.and_then(|g| g.cluster(&c.name)).map(|c| &**c);
                Cluster::build(c, file, runtime, metrics, old).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let by_name: HashMap<String, usize> = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.config.name.clone(), i))
            .collect();
        let router = match &config.routing {
            Routing::Table(routes) => {
                Router::Table(RouteTable::new(routes, |n| by_name.get(n).copied()))
            }
            Routing::Plugin(use_) => {
                // The router answers an index into this list, which is `clusters`' order.
                let names: Vec<String> = clusters.iter().map(|c| c.config.name.clone()).collect();
                Router::Plugin(
                    runtime
                        .router(&use_.plugin, &use_.settings, &names)
                        .map_err(|e| plugin_error(file, use_, e))?,
                )
            }
        };
        let filters = config
            .filters
            .iter()
            .map(|f| {
                runtime
                    .filter(&f.plugin, &f.settings)
                    .map_err(|e| plugin_error(file, f, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Gateway {
            config,
            router,
            filters,
            clusters,
            by_name,
        })
    }

    /// Stops the health checks of every cluster (the gateway was replaced; requests still in
    /// flight on it finish normally).
    pub fn stop_health_checks(&self) {
        for c in &self.clusters {
            c.health_task.stop();
        }
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.by_name.get(name).map(|&i| &self.clusters[i])
    }
}
