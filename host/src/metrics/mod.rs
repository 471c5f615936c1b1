//! Prometheus metrics. Counters on the request path are made once per cluster and endpoint when the
//! config is built, so serving a request does no label lookup or allocation; plugin figures are read
//! from the runtime at scrape time.

mod histogram;
mod l4;

pub use histogram::DurationHistogram;
pub use l4::L4Metrics;

use crate::plugin::PluginRuntime;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    cluster: String,
    endpoint: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    plugin: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    cluster: String,
    endpoint: String,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    cluster: String,
    endpoint: String,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index of a status's class in [`CLASSES`].
fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// Request counters by status class, for one (cluster, endpoint) pair.
#[derive(Clone, Debug)]
pub struct EndpointMetrics {
    requests: [Counter; 5],
}

impl EndpointMetrics {
    /// Counts one request answered with `status`.
    pub fn count(&self, status: u16) {
        self.requests[class_index(status)].inc();
    }
}

/// Per-cluster metrics.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// Requests of the cluster answered without an endpoint (503, 502...).
    pub local: EndpointMetrics,
    /// Total request duration.
    pub duration: DurationHistogram,
    /// Retries.
    pub retries: Counter,
}

/// Every metric of the proxy.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<ClusterLabels, DurationHistogram, fn() -> DurationHistogram>,
    retries: Family<ClusterLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
    /// Client connections open now.
    pub open_connections: Gauge,
    worker_connections: Family<WorkerLabels, Counter>,
    unrouted: EndpointMetrics,
    /// L4 (tcp, tls-passthrough) connection and byte counters.
    pub l4: L4Metrics,
    health: HealthMetrics,
}

/// Health-check figures: probes by result, state changes, health and panic gauges. Probes and
/// state changes are rare next to requests, so label lookups here are fine.
#[derive(Clone, Debug, Default)]
pub struct HealthMetrics {
    probes: Family<HealthLabels, Counter>,
    transitions: Family<HealthLabels, Counter>,
    healthy: Family<EndpointLabels, Gauge>,
    panic: Family<ClusterLabels, Gauge>,
}

impl HealthMetrics {
    /// Counts one active probe of `endpoint`, passed or not.
    pub fn probe(&self, cluster: &str, endpoint: &str, passed: bool) {
        self.probes
            .get_or_create(&HealthLabels {
                cluster: cluster.to_string(),
                endpoint: endpoint.to_string(),
                event: if passed { "pass" } else { "fail" },
            })
            .inc();
    }

    /// Counts a health state change: `down`, `up`, `ejected`, `returned`.
    pub fn transition(&self, cluster: &str, endpoint: &str, event: &'static str) {
        self.transitions
            .get_or_create(&HealthLabels {
                cluster: cluster.to_string(),
                endpoint: endpoint.to_string(),
                event,
            })
            .inc();
    }

    /// Sets whether `endpoint` gets traffic (1) or not (0).
    pub fn set_healthy(&self, cluster: &str, endpoint: &str, healthy: bool) {
        self.healthy
            .get_or_create(&EndpointLabels {
                cluster: cluster.to_string(),
                endpoint: endpoint.to_string(),
            })
            .set(i64::from(healthy));
    }

    /// Sets whether `cluster` is in panic mode.
    pub fn set_panic(&self, cluster: &str, panic: bool) {
        self.panic
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_string(),
            })
            .set(i64::from(panic));
    }
}

fn duration_histogram() -> DurationHistogram {
    DurationHistogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// Registers every metric; plugin figures are read from `runtime` at each scrape.
    pub fn new(runtime: PluginRuntime) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "sluicegate_requests",
            "Requests answered, by cluster, endpoint (empty for local answers) and status class",
            requests.clone(),
        );
        let duration = Family::<ClusterLabels, DurationHistogram, fn() -> DurationHistogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register(
            "sluicegate_request_duration_seconds",
            "Time from request to the end of the response body, by cluster",
            duration.clone(),
        );
        let retries = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "sluicegate_retries",
            "Upstream retries, by cluster",
            retries.clone(),
        );
        let fallbacks = Family::<FallbackLabels, Counter>::default();
        registry.register(
            "sluicegate_plugin_fallbacks",
            "Requests served by a fallback because a plugin faulted, by plugin and kind",
            fallbacks.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "sluicegate_open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let worker_connections = Family::<WorkerLabels, Counter>::default();
        registry.register(
            "sluicegate_worker_connections",
            "Client connections accepted, by worker thread (the kernel spreads them)",
            worker_connections.clone(),
        );
        let health = HealthMetrics::default();
        registry.register(
            "sluicegate_health_probes",
            "Active health probes, by cluster, endpoint and event (pass, fail)",
            health.probes.clone(),
        );
        registry.register(
            "sluicegate_health_transitions",
            "Endpoint health changes, by cluster, endpoint and event (down, up, ejected, returned)",
            health.transitions.clone(),
        );
        registry.register(
            "sluicegate_endpoint_healthy",
            "Whether an endpoint gets traffic (active and passive checks), by cluster and endpoint",
            health.healthy.clone(),
        );
        registry.register(
            "sluicegate_cluster_panic",
            "Whether a cluster is in panic mode (too few healthy endpoints: traffic goes to all)",
            health.panic.clone(),
        );
        let l4 = L4Metrics::default();
        l4.register(&mut registry);
        registry.register_collector(Box::new(PluginCollector(runtime)));
        let unrouted = EndpointMetrics {
            requests: CLASSES.map(|class| {
                requests
                    .get_or_create(&RequestLabels {
                        cluster: String::new(),
                        endpoint: String::new(),
                        class,
                    })
                    .clone()
            }),
        };
        Metrics {
            registry,
            requests,
            duration,
            retries,
            fallbacks,
            open_connections,
            worker_connections,
            unrouted,
            health,
            l4,
        }
    }

    /// The counters of one endpoint (made once per config build).
    pub fn endpoint(&self, cluster: &str, endpoint: &str) -> EndpointMetrics {
        EndpointMetrics {
            requests: CLASSES.map(|class| {
                self.requests
                    .get_or_create(&RequestLabels {
                        cluster: cluster.to_string(),
                        endpoint: endpoint.to_string(),
                        class,
                    })
                    .clone()
            }),
        }
    }

    /// The metrics of one cluster (made once per config build).
    pub fn cluster(&self, cluster: &str) -> ClusterMetrics {
        let labels = ClusterLabels {
            cluster: cluster.to_string(),
        };
        ClusterMetrics {
            local: self.endpoint(cluster, ""),
            duration: self.duration.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
        }
    }

    /// The health-check figures.
    pub fn health(&self) -> HealthMetrics {
        self.health.clone()
    }

    /// Counters of requests answered before a cluster was chosen.
    pub fn unrouted(&self) -> &EndpointMetrics {
        &self.unrouted
    }

    /// Counts a request served by a fallback because `plugin` faulted.
    pub fn fallback(&self, plugin: &str, kind: &'static str) {
        self.fallbacks
            .get_or_create(&FallbackLabels {
                plugin: plugin.to_string(),
                kind,
            })
            .inc();
    }

    /// The accepted-connections counter of one worker (looked up once per listener and worker).
    pub fn worker_connections(&self, worker: &str) -> Counter {
        self.worker_connections
            .get_or_create(&WorkerLabels {
                worker: worker.to_string(),
            })
            .clone()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Reads one figure of a plugin's status.
type Figure = fn(&crate::plugin::PluginStatus) -> f64;

/// Reads plugin figures from the runtime at scrape time.
#[derive(Clone)]
struct PluginCollector(PluginRuntime);

impl std::fmt::Debug for PluginCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginCollector")
    }
}

impl prometheus_client::collector::Collector for PluginCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        let plugins = self.0.plugins();
        let figures: [(&str, &str, Figure); 3] = [
            ("sluicegate_plugin_calls", "Plugin calls", |p| {
                p.calls as f64
            }),
            (
                "sluicegate_plugin_faults",
                "Plugin faults (trap, deadline, memory, invalid answer)",
                |p| p.faults as f64,
            ),
            (
                "sluicegate_plugin_call_seconds",
                "Time spent in plugin calls",
                |p| p.call_nanos_total as f64 / 1e9,
            ),
        ];
        for (name, help, value) in figures {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in &plugins {
                let labels = [("plugin", p.name.as_str()), ("version", p.version.as_str())];
                ConstCounter::new(value(p)).encode(metric.encode_family(&labels)?)?;
            }
        }
        let counters = self.0.counters();
        let mut metric = encoder.encode_descriptor(
            "sluicegate_plugin_counter",
            "Counters plugins bump through counter-add",
            None,
            MetricType::Counter,
        )?;
        for (plugin, name, value) in &counters {
            let labels = [("plugin", plugin.as_str()), ("name", name.as_str())];
            ConstCounter::new(*value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
