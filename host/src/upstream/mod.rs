//! Upstream clusters: endpoints, the balancer that picks among them, the facts the host measures about
//! them, and (from `sluicegate-upstream`) their pooled keep-alive connections and retry budget.

mod facts;

pub(crate) use facts::{ClusterFacts, InFlight};
pub(crate) use sluicegate_upstream::{
    ActiveRequest, BoxError, Pool, RequestBody, RequestBodyError, RetryBudget, RetryPermit,
    UpstreamBody, UpstreamError, h1, tls,
};

use crate::config::{ClusterConfig, ConfigError, PluginUse};
use crate::health::{ClusterHealth, HealthTask};
use crate::metrics::{EndpointMetrics, Metrics};
use crate::plugin::{BalancerHandle, EndpointId, PluginError, PluginRuntime, RequestHead};
use hyper_util::client::legacy::connect::HttpConnector;
use std::sync::Arc;

/// One backend of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    /// Stable id within the cluster (its index).
    pub id: EndpointId,
    /// `host:port` as configured.
    pub address: String,
    /// Parsed once, for building upstream URIs.
    pub authority: http::uri::Authority,
    /// Relative weight.
    pub weight: u32,
    /// Config metadata.
    pub metadata: Vec<(String, String)>,
    /// Its request counters, made once so the request path does no label lookup.
    pub metrics: EndpointMetrics,
}

/// A cluster as served: endpoints, balancers, connection pool, facts and budget.
pub struct Cluster {
    /// Its config.
    pub config: ClusterConfig,
    /// Endpoints, indexed by id.
    pub endpoints: Vec<Endpoint>,
    /// The balancer.
    pub balancer: BalancerHandle,
    /// The balancer used when `balancer` faults.
    pub fallback: BalancerHandle,
    /// In-flight counts and latency EWMA per endpoint.
    pub facts: Arc<ClusterFacts>,
    /// The retry budget.
    pub budget: Arc<RetryBudget>,
    /// Keep-alive connections to the endpoints (TLS when `[clusters.tls]` is set). Each worker thread
    /// runs its own event loop and has its own idle lists, so an upstream connection stays on the loop
    /// that uses it: no cross-thread wake-ups, no shared lock on the request path (as Envoy's and
    /// nginx's per-worker pools).
    pub pool: Arc<Pool>,
    /// The cluster's counters, made once.
    pub metrics: crate::metrics::ClusterMetrics,
    /// The TLS client config of `[clusters.tls]`, for L4 connections (HTTP uses `pool`).
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
    /// Endpoint health (active and passive checks); it keeps the balancers' pool up to date.
    pub health: Arc<ClusterHealth>,
    /// Runs the health checks while the cluster serves.
    pub health_task: HealthTask,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.config.name)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// Turns a plugin error into a config error pointing at the use's settings when the plugin's
/// `init` refused them (and the config gave settings), else at the key naming the plugin.
pub fn plugin_error(file: &str, use_: &PluginUse, source: PluginError) -> ConfigError {
    let (at, key) = match (&source, &use_.settings_at) {
        (PluginError::InitRefused { .. }, Some((at, key))) => (*at, key.clone()),
        _ => (use_.at, use_.key.clone()),
    };
    ConfigError::Plugin {
        file: file.to_string(),
        at,
        key,
        source: Box::new(source),
    }
}

impl Cluster {
    /// The balancer's pick, or the fallback balancer's when the balancer faults or answers an
    /// endpoint the cluster does not have. When both fault, the host's last resort is the first
    /// endpoint not yet tried among those that get traffic (healthy, or any in panic mode), else
    /// one that got traffic already: never one the host judged down.
    pub(crate) fn pick(
        &self,
        metrics: &Metrics,
        head: &Arc<RequestHead>,
        attempt: u32,
        tried: &[EndpointId],
    ) -> Option<EndpointId> {
        let valid = |id: EndpointId| (id as usize) < self.endpoints.len();
        match self.balancer.pick(head, attempt, tried) {
            Ok(Some(id)) if valid(id) => return Some(id),
            Ok(None) => return None,
            Ok(Some(id)) => {
                tracing::warn!(
                    plugin = self.balancer.plugin(),
                    id,
                    "balancer picked an unknown endpoint: falling back"
                );
            }
            // The runtime logged the fault (at most a line a second per plugin); while the
            // balancer's breaker is open this is every request, and costs no call.
            Err(_) => {}
        }
        metrics.fallback(self.balancer.plugin(), "balancer");
        match self.fallback.pick(head, attempt, tried) {
            Ok(Some(id)) if valid(id) => Some(id),
            Ok(None) => None,
            _ => {
                metrics.fallback(self.fallback.plugin(), "balancer");
                let panic = self.health.panic();
                let mut serving = (0..self.endpoints.len() as EndpointId)
                    .filter(|&id| panic || self.health.healthy(id));
                let first = serving.clone().next();
                serving.find(|id| !tried.contains(id)).or(first)
            }
        }
    }

    /// Builds a cluster: creates its balancer uses through the runtime (running their `init`),
    /// pushes the pool to them and starts its health checks. Endpoints that were in `previous`
    /// (the same cluster of the config being replaced) keep their health.
    pub fn build(
        config: &ClusterConfig,
        file: &str,
        runtime: &PluginRuntime,
        metrics: &Metrics,
        previous: Option<&Cluster>,
    ) -> Result<Cluster, ConfigError> {
        let facts = ClusterFacts::new(config.endpoints.len());
        let balancer = runtime
            .balancer(
                &config.balancer.plugin,
                &config.balancer.settings,
                facts.clone(),
            )
            .map_err(|e| plugin_error(file, &config.balancer, e))?;
        let fallback = runtime
            .balancer(
                &config.fallback_balancer.plugin,
                &config.fallback_balancer.settings,
                facts.clone(),
            )
            .map_err(|e| plugin_error(file, &config.fallback_balancer, e))?;

        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for (i, e) in config.endpoints.iter().enumerate() {
            let authority = e.address.parse().map_err(|_| ConfigError::Other {
                file: file.to_string(),
                message: format!(
                    "cluster `{}`: bad endpoint address `{}`",
                    config.name, e.address
                ),
            })?;
            endpoints.push(Endpoint {
                id: i as EndpointId,
                address: e.address.clone(),
                authority,
                weight: e.weight,
                metadata: e.metadata.clone(),
                metrics: metrics.endpoint(&config.name, &e.address),
            });
        }
        let health_policy = match &config.health.plugin {
            Some(use_) => Some(
                runtime
                    .health_policy(&use_.plugin, &use_.settings)
                    .map_err(|e| plugin_error(file, use_, e))?,
            ),
            None => None,
        };
        let health = ClusterHealth::new(
            config,
            vec![balancer.clone(), fallback.clone()],
            health_policy,
            previous.map(|p| &*p.health),
            metrics.health(),
        );
        let health_task = health.start();

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        // The TLS wrapper below decides per URI scheme (https for `[clusters.tls]`).
        connector.enforce_http(false);
        let tls_error = |message| ConfigError::Other {
            file: file.to_string(),
            message,
        };
        let tls_client = match &config.tls {
            Some(t) => Some(Arc::new(
                tls::client_config(&config.name, t).map_err(tls_error)?,
            )),
            None => None,
        };
        let connector = tls::connector(
            &config.name,
            connector,
            config.tls.as_ref().zip(tls_client.as_deref().cloned()),
        )
        .map_err(tls_error)?;
        let authorities: Vec<_> = endpoints.iter().map(|e| e.authority.clone()).collect();
        let timeouts = h1::Timeouts {
            connect: config.connect_timeout,
            response: config.response_timeout,
            read: config.read_timeout,
            write: config.write_timeout,
        };
        let pool = Pool::new(
            &authorities,
            config.tls.is_some(),
            connector,
            timeouts,
            config.idle_timeout,
            config.max_idle_per_endpoint,
        );

        Ok(Cluster {
            budget: RetryBudget::new(config.retry.budget_ratio, config.retry.min_retries),
            metrics: metrics.cluster(&config.name),
            config: config.clone(),
            endpoints,
            balancer,
            fallback,
            facts,
            pool,
            tls_client,
            health,
            health_task,
        })
    }

    /// The endpoint with this id.
    pub fn endpoint(&self, id: EndpointId) -> Option<&Endpoint> {
        self.endpoints.get(id as usize)
    }
}
