//! A config built into what serves requests: the route table or router plugin, the filters, and the
//! clusters with their balancers and pools. A reload builds a new one and swaps it in whole.

use crate::config::{Config, ConfigError, FilterFault, RouterFault, Routing};
use crate::headers;
use crate::metrics::Metrics;
use crate::plugin::{
    FilterHandle, LocalResponse, PluginRuntime, RequestHead, RouteDecision, RouterHandle,
};
use crate::routes::{RouteSettings, RouteTable};
use crate::upstream::{Cluster, plugin_error};
use http::StatusCode;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// How a request finds its cluster.
#[derive(Clone)]
pub enum Router {
    /// The host's route table.
    Table(RouteTable),
    /// A router plugin, and what serves when it faults.
    Plugin(RouterHandle, RouterFallback),
}

/// What serves when the router plugin faults (or its breaker is open).
#[derive(Clone)]
pub enum RouterFallback {
    /// An answer with this status.
    Respond(StatusCode),
    /// The route table.
    Table(RouteTable),
    /// Another router plugin (whose own fault is answered 502).
    Plugin(RouterHandle),
}

/// Where a request goes, or how it is answered instead.
pub(crate) enum Destination {
    /// Forward to this cluster, with the matched route's settings.
    Cluster(Arc<Cluster>, RouteSettings),
    /// A plugin's answer, with the reason for the access log.
    Plugin(LocalResponse, Cow<'static, str>),
    /// The proxy's own answer, with the reason.
    Local(StatusCode, Cow<'static, str>),
}

/// A filter use and what its fault means.
#[derive(Clone)]
pub struct Filter {
    /// The plugin use.
    pub handle: FilterHandle,
    /// Skip it, or answer 503, when it faults.
    pub on_fault: FilterFault,
}

/// Everything a request needs, built from one config.
pub struct Gateway {
    /// The config it was built from.
    pub config: Config,
    /// Routing.
    pub router: Router,
    /// Filters in config order.
    pub filters: Vec<Filter>,
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
            Routing::Plugin { router, on_fault } => {
                // The router answers an index into this list, which is `clusters`' order.
                let names: Vec<String> = clusters.iter().map(|c| c.config.name.clone()).collect();
                let make = |use_: &crate::config::PluginUse| {
                    runtime
                        .router(&use_.plugin, &use_.settings, &names)
                        .map_err(|e| plugin_error(file, use_, e))
                };
                let fallback = match on_fault.as_ref() {
                    RouterFault::Respond(status) => RouterFallback::Respond(
                        StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
                    ),
                    RouterFault::Routes(routes) => {
                        RouterFallback::Table(RouteTable::new(routes, |n| by_name.get(n).copied()))
                    }
                    RouterFault::Router(use_) => RouterFallback::Plugin(make(use_)?),
                };
                Router::Plugin(make(router)?, fallback)
            }
        };
        let filters = config
            .filters
            .iter()
            .map(|f| {
                let handle = runtime
                    .filter(&f.plugin.plugin, &f.plugin.settings)
                    .map_err(|e| plugin_error(file, &f.plugin, e))?;
                Ok(Filter {
                    handle,
                    on_fault: f.on_fault,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
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

    /// Where `head` goes: the router's (or route table's) cluster, or the answer given instead.
    /// A router that faults (logged by the runtime, counted here) hands over to its fallback.
    pub(crate) fn route(&self, head: &Arc<RequestHead>, metrics: &Metrics) -> Destination {
        let (router, fallback) = match &self.router {
            Router::Table(table) => return self.by_table(table, head),
            Router::Plugin(router, fallback) => (router, fallback),
        };
        let reason = match self.ask(router, head) {
            Ok(destination) => return destination,
            Err(reason) => reason,
        };
        metrics.fallback(router.plugin(), "router");
        match fallback {
            RouterFallback::Respond(status) => Destination::Local(*status, reason),
            RouterFallback::Table(table) => self.by_table(table, head),
            RouterFallback::Plugin(other) => self.ask(other, head).unwrap_or_else(|reason| {
                metrics.fallback(other.plugin(), "router");
                Destination::Local(StatusCode::BAD_GATEWAY, reason)
            }),
        }
    }

    /// The route table's cluster for `head` (by its host and path), or 404.
    fn by_table(&self, table: &RouteTable, head: &RequestHead) -> Destination {
        let host = headers::request_authority(&head.parts.uri, &head.parts.headers)
            .map(headers::strip_port);
        match table.route(host, head.parts.uri.path()) {
            Some((i, settings)) => Destination::Cluster(self.clusters[i].clone(), settings),
            None => Destination::Local(StatusCode::NOT_FOUND, "no route".into()),
        }
    }

    /// What `router` decides for `head`; its fault as the reason to give.
    fn ask(
        &self,
        router: &RouterHandle,
        head: &Arc<RequestHead>,
    ) -> Result<Destination, Cow<'static, str>> {
        match router.route(head) {
            // The handle checked the index against the names it was made with, which are
            // `clusters`; `get` only keeps a broken invariant from panicking here.
            Ok(RouteDecision::Cluster(i)) => match self.clusters.get(i) {
                Some(c) => Ok(Destination::Cluster(c.clone(), RouteSettings::DEFAULT)),
                None => Err(format!("router chose cluster {i}, which does not exist").into()),
            },
            Ok(RouteDecision::Respond(local)) => Ok(Destination::Plugin(
                local,
                format!("answered by router {}", router.plugin()).into(),
            )),
            Err(_) => Err(format!("router fault: {}", router.plugin()).into()),
        }
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.by_name.get(name).map(|&i| &self.clusters[i])
    }
}
