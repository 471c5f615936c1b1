//! Prometheus metrics. Counters on the request path are made once per cluster and endpoint when the
//! config is built, so serving a request does no label lookup or allocation; plugin figures are read
//! from the runtime at scrape time.
//!
//! The series of a cluster or endpoint stay while some built config has it: each holds a [`Lease`]
//! (its counters, its cluster's health), and when a reload has removed it and the last config that
//! had it is gone (requests still finishing on the old config included), its series leave `/metrics`.

mod histogram;
mod l4;

pub use histogram::DurationHistogram;
pub use l4::L4Metrics;

use crate::plugin::PluginRuntime;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

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
struct ListenerLabels {
    listener: String,
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

/// The `event` labels of `sluicegate_health_probes`.
const PROBE_EVENTS: [&str; 2] = ["pass", "fail"];

/// The `event` labels of `sluicegate_health_transitions`.
const TRANSITION_EVENTS: [&str; 4] = ["down", "up", "ejected", "returned"];

type DurationFamily = Family<ClusterLabels, DurationHistogram, fn() -> DurationHistogram>;

/// A whole cluster (endpoint `None`) or one of its endpoints (`Some("")`: the cluster's own answers).
type SeriesKey = (String, Option<String>);

/// Every family with a cluster (and endpoint) label, to remove the series of one from.
#[derive(Debug)]
struct Series {
    requests: Family<RequestLabels, Counter>,
    duration: DurationFamily,
    retries: Family<ClusterLabels, Counter>,
    probes: Family<HealthLabels, Counter>,
    transitions: Family<HealthLabels, Counter>,
    healthy: Family<EndpointLabels, Gauge>,
    panic: Family<ClusterLabels, Gauge>,
    l4: L4Metrics,
}

impl Series {
    fn remove(&self, cluster: &str, endpoint: Option<&str>) {
        let Some(endpoint) = endpoint else {
            let labels = ClusterLabels {
                cluster: cluster.to_string(),
            };
            self.duration.remove(&labels);
            self.retries.remove(&labels);
            self.panic.remove(&labels);
            return;
        };
        let (cluster, endpoint) = (cluster.to_string(), endpoint.to_string());
        for class in CLASSES {
            self.requests.remove(&RequestLabels {
                cluster: cluster.clone(),
                endpoint: endpoint.clone(),
                class,
            });
        }
        for (family, events) in [
            (&self.probes, &PROBE_EVENTS[..]),
            (&self.transitions, &TRANSITION_EVENTS[..]),
        ] {
            for &event in events {
                family.remove(&HealthLabels {
                    cluster: cluster.clone(),
                    endpoint: endpoint.clone(),
                    event,
                });
            }
        }
        self.healthy.remove(&EndpointLabels {
            cluster: cluster.clone(),
            endpoint: endpoint.clone(),
        });
        self.l4.remove(&cluster, &endpoint);
    }
}

/// How many leases each cluster and endpoint has, and the families to clear when one has none left.
#[derive(Debug)]
struct Leases {
    counts: Mutex<HashMap<SeriesKey, usize>>,
    series: Series,
}

impl Leases {
    /// A lease on the series of `cluster` (`endpoint` `None`) or of one of its endpoints. Take it
    /// before making any of them: a lease ending meanwhile could otherwise remove them.
    fn take(self: &Arc<Self>, cluster: &str, endpoint: Option<&str>) -> Lease {
        let key = (cluster.to_string(), endpoint.map(str::to_string));
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry(key.clone()).or_default() += 1;
        Lease {
            key,
            leases: self.clone(),
        }
    }
}

/// Keeps the series of a cluster or endpoint in `/metrics` while some built config has it: the
/// last lease on one to go removes its series (the counters still held elsewhere count on, unseen).
#[derive(Debug)]
pub struct Lease {
    key: SeriesKey,
    leases: Arc<Leases>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Under the lock, so that a lease taken meanwhile (a reload adding the endpoint back) either
        // keeps the series or makes them afresh after their removal.
        let mut counts = self
            .leases
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match counts.get_mut(&self.key) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                counts.remove(&self.key);
                self.leases
                    .series
                    .remove(&self.key.0, self.key.1.as_deref());
            }
        }
    }
}

/// The leases of one cluster's health figures: the cluster's and each endpoint's.
#[derive(Debug)]
pub struct HealthLeases {
    _leases: Vec<Lease>,
}

/// Index of a status's class in [`CLASSES`].
fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// Request counters by status class, for one (cluster, endpoint) pair.
#[derive(Clone, Debug)]
pub struct EndpointMetrics {
    requests: [Counter; 5],
    _lease: Arc<Lease>,
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
    _lease: Arc<Lease>,
}

/// Every metric of the proxy.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    leases: Arc<Leases>,
    requests: Family<RequestLabels, Counter>,
    duration: DurationFamily,
    retries: Family<ClusterLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
    /// Client connections open now.
    pub open_connections: Gauge,
    worker_connections: Family<WorkerLabels, Counter>,
    listener_open: Family<ListenerLabels, Gauge>,
    listener_evicted: Family<ListenerLabels, Counter>,
    listener_held: Family<ListenerLabels, Counter>,
    unrouted: EndpointMetrics,
    /// L4 (tcp, tls-passthrough) connection and byte counters.
    pub l4: L4Metrics,
    /// The access log's counters.
    pub access_log: AccessLogMetrics,
    health: HealthMetrics,
}

/// The access log's figures, counted by its writer thread.
#[derive(Clone, Debug, Default)]
pub struct AccessLogMetrics {
    /// Lines written.
    pub written: Counter,
    /// Lines dropped: the queue to the writer was full or the write failed.
    pub dropped: Counter,
    /// Failed writes and reopens.
    pub errors: Counter,
    /// Times the file was reopened.
    pub reopened: Counter,
}

impl AccessLogMetrics {
    fn register(&self, registry: &mut Registry) {
        for (name, help, counter) in [
            (
                "sluicegate_access_log_lines",
                "Access log lines written",
                &self.written,
            ),
            (
                "sluicegate_access_log_dropped_lines",
                "Access log lines dropped: the disk did not keep up (when_full = \"drop\") or a write failed",
                &self.dropped,
            ),
            (
                "sluicegate_access_log_errors",
                "Access log writes and reopens that failed",
                &self.errors,
            ),
            (
                "sluicegate_access_log_reopened",
                "Times the access log file was reopened (SIGUSR1, or renamed or removed)",
                &self.reopened,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
    }
}

/// Health-check figures: probes by result, state changes, health and panic gauges. Probes and
/// state changes are rare next to requests, so label lookups here are fine.
#[derive(Clone, Debug)]
pub struct HealthMetrics {
    probes: Family<HealthLabels, Counter>,
    transitions: Family<HealthLabels, Counter>,
    healthy: Family<EndpointLabels, Gauge>,
    panic: Family<ClusterLabels, Gauge>,
    leases: Arc<Leases>,
}

impl HealthMetrics {
    /// Leases on the series of `cluster` and its `endpoints`, for as long as its health is figured
    /// (old health checks may outlive the config that had them by a moment).
    pub fn leases<'a>(
        &self,
        cluster: &str,
        endpoints: impl IntoIterator<Item = &'a str>,
    ) -> HealthLeases {
        let mut leases = vec![self.leases.take(cluster, None)];
        leases.extend(
            endpoints
                .into_iter()
                .map(|e| self.leases.take(cluster, Some(e))),
        );
        HealthLeases { _leases: leases }
    }

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
        debug_assert!(TRANSITION_EVENTS.contains(&event), "{event}");
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
        let duration = DurationFamily::new_with_constructor(duration_histogram);
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
        let listener_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "sluicegate_listener_open_connections",
            "Client connections open now, by listener (HTTP and L4)",
            listener_open.clone(),
        );
        let listener_evicted = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "sluicegate_listener_connections_evicted",
            "Idle keep-alive connections closed to make room under a connection cap, by listener",
            listener_evicted.clone(),
        );
        let listener_held = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "sluicegate_listener_connections_held",
            "New connections that found a connection cap reached with none idle and waited for a \
             slot (accepting stops meanwhile), by listener",
            listener_held.clone(),
        );
        let l4 = L4Metrics::default();
        let leases = Arc::new(Leases {
            counts: Mutex::new(HashMap::new()),
            series: Series {
                requests: requests.clone(),
                duration: duration.clone(),
                retries: retries.clone(),
                probes: Family::default(),
                transitions: Family::default(),
                healthy: Family::default(),
                panic: Family::default(),
                l4: l4.clone(),
            },
        });
        let health = HealthMetrics {
            probes: leases.series.probes.clone(),
            transitions: leases.series.transitions.clone(),
            healthy: leases.series.healthy.clone(),
            panic: leases.series.panic.clone(),
            leases: leases.clone(),
        };
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
        l4.register(&mut registry);
        let access_log = AccessLogMetrics::default();
        access_log.register(&mut registry);
        registry.register_collector(Box::new(PluginCollector(runtime)));
        let unrouted = endpoint_metrics(&leases, &requests, "", "");
        Metrics {
            registry,
            leases,
            requests,
            duration,
            retries,
            fallbacks,
            open_connections,
            worker_connections,
            listener_open,
            listener_evicted,
            listener_held,
            unrouted,
            health,
            l4,
            access_log,
        }
    }

    /// The counters of one endpoint (made once per config build); its series stay while they do.
    pub fn endpoint(&self, cluster: &str, endpoint: &str) -> EndpointMetrics {
        endpoint_metrics(&self.leases, &self.requests, cluster, endpoint)
    }

    /// The metrics of one cluster (made once per config build); its series stay while they do.
    pub fn cluster(&self, cluster: &str) -> ClusterMetrics {
        let lease = Arc::new(self.leases.take(cluster, None));
        let labels = ClusterLabels {
            cluster: cluster.to_string(),
        };
        ClusterMetrics {
            local: self.endpoint(cluster, ""),
            duration: self.duration.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
            _lease: lease,
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

    /// The connection gauges and counters of the listener at `address`, for its connection cap
    /// (once per accept loop).
    pub(crate) fn listener_slots(
        &self,
        address: std::net::SocketAddr,
        max_connections: Option<usize>,
    ) -> crate::conn_limit::ListenerSlots {
        let labels = ListenerLabels {
            listener: address.to_string(),
        };
        crate::conn_limit::ListenerSlots {
            address,
            max_connections,
            open: self.listener_open.get_or_create(&labels).clone(),
            evicted: self.listener_evicted.get_or_create(&labels).clone(),
            held: self.listener_held.get_or_create(&labels).clone(),
        }
    }

    /// The Prometheus text exposition: families in registration order, the series of each sorted
    /// by their label values.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        sort_series(&out)
    }
}

/// The request counters of `endpoint` of `cluster`, with a lease on their series.
fn endpoint_metrics(
    leases: &Arc<Leases>,
    requests: &Family<RequestLabels, Counter>,
    cluster: &str,
    endpoint: &str,
) -> EndpointMetrics {
    let lease = Arc::new(leases.take(cluster, Some(endpoint)));
    EndpointMetrics {
        requests: CLASSES.map(|class| {
            requests
                .get_or_create(&RequestLabels {
                    cluster: cluster.to_string(),
                    endpoint: endpoint.to_string(),
                    class,
                })
                .clone()
        }),
        _lease: lease,
    }
}

/// Sorts the series of every family of a text exposition by their label values (runs of digits
/// by value: `worker="2"` before `worker="10"`), keeping the families in their order and the lines
/// of one series (a histogram's sum, count and buckets; `le` does not count) together and in
/// theirs. prometheus-client keeps a family's series in a hash map, whose order differs between
/// runs and changes as series come and go.
fn sort_series(text: &str) -> String {
    /// One series: its label values, and its lines.
    type Group<'a> = (Vec<&'a str>, Vec<&'a str>);
    fn flush(out: &mut String, groups: &mut Vec<Group<'_>>) {
        groups.sort_by(|(a, _), (b, _)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| natural_cmp(x, y))
                .find(|o| o.is_ne())
                .unwrap_or_else(|| a.len().cmp(&b.len()))
        });
        for (_, lines) in groups.drain(..) {
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut groups: Vec<Group<'_>> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut out, &mut groups);
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let key = label_values(line);
        match groups.last_mut() {
            Some((k, lines)) if *k == key => lines.push(line),
            _ => groups.push((key, vec![line])),
        }
    }
    flush(&mut out, &mut groups);
    out
}

/// The label values of a sample line as written (escapes kept), but `le` and `quantile`, which
/// tell the lines of one series apart.
fn label_values(line: &str) -> Vec<&str> {
    let mut values = Vec::new();
    let Some(open) = line
        .find(['{', ' '])
        .filter(|&i| line[i..].starts_with('{'))
    else {
        return values;
    };
    let mut rest = &line[open + 1..];
    while let Some(eq) = rest.find('=') {
        if rest.starts_with('}') {
            break;
        }
        let name = &rest[..eq];
        let value = &rest[eq + 1..];
        let Some(value) = value.strip_prefix('"') else {
            break;
        };
        // The closing quote: the first not escaped by a backslash.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in value.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else { break };
        if name != "le" && name != "quantile" {
            values.push(&value[..end]);
        }
        rest = &value[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    values
}

/// Compares two strings with their runs of ASCII digits by value (`a2` before `a10`).
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, ra) = a.split_at(digits(a));
                let (nb, rb) = b.split_at(digits(b));
                let trim = |n: &'_ [u8]| -> usize { n.iter().take_while(|&&c| c == b'0').count() };
                let (va, vb) = (&na[trim(na)..], &nb[trim(nb)..]);
                let order = va
                    .len()
                    .cmp(&vb.len())
                    .then_with(|| va.cmp(vb))
                    .then_with(|| na.len().cmp(&nb.len()));
                if order.is_ne() {
                    return order;
                }
                (a, b) = (ra, rb);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

/// Reads one figure of a version's figures.
type Figure = fn(&crate::plugin::VersionStatus) -> f64;

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
        use crate::plugin::{BreakerState, VersionStatus};
        use prometheus_client::metrics::MetricType;
        let plugins = self.0.plugins();
        // Every version a plugin kept in its history, the serving one first, so fault counts
        // survive a reload or a rollback (the `version` label tells them apart).
        let versions: Vec<(&str, VersionStatus)> = plugins
            .iter()
            .flat_map(|p| {
                let current = VersionStatus {
                    version: p.version.clone(),
                    source: p.source.clone(),
                    loaded_at_unix: p.loaded_at_unix,
                    calls: p.calls,
                    faults: p.faults,
                    trips: p.trips,
                    rolled_back: false,
                };
                std::iter::once((p.name.as_str(), current)).chain(
                    p.previous_versions
                        .iter()
                        .map(|v| (p.name.as_str(), v.clone())),
                )
            })
            .collect();
        let figures: [(&str, &str, Figure); 3] = [
            ("sluicegate_plugin_calls", "Plugin calls", |v| {
                v.calls as f64
            }),
            (
                "sluicegate_plugin_faults",
                "Plugin faults (trap, panic, fuel, deadline, memory, invalid answer)",
                |v| v.faults as f64,
            ),
            (
                "sluicegate_plugin_breaker_trips",
                "Times a plugin use's circuit breaker opened",
                |v| v.trips as f64,
            ),
        ];
        for (name, help, value) in figures {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (plugin, v) in &versions {
                let labels = [("plugin", *plugin), ("version", v.version.as_str())];
                ConstCounter::new(value(v)).encode(metric.encode_family(&labels)?)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "sluicegate_plugin_call_seconds",
            "Time spent in plugin calls (the serving version)",
            None,
            MetricType::Counter,
        )?;
        for p in &plugins {
            let labels = [("plugin", p.name.as_str()), ("version", p.version.as_str())];
            let seconds = p.call_nanos_total as f64 / 1e9;
            ConstCounter::new(seconds).encode(metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "sluicegate_plugin_breakers_open",
            "Uses of a plugin whose circuit breaker is open or half-open (their fallback serves)",
            None,
            MetricType::Gauge,
        )?;
        for p in &plugins {
            let open = p
                .uses
                .iter()
                .filter(|u| u.breaker.state != BreakerState::Closed)
                .count();
            let labels = [("plugin", p.name.as_str())];
            ConstGauge::new(open as i64).encode(metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "sluicegate_plugin_rollbacks",
            "Versions rolled back after their breaker opened soon after a hot reload",
            None,
            MetricType::Counter,
        )?;
        for p in &plugins {
            let labels = [("plugin", p.name.as_str())];
            ConstCounter::new(p.rollbacks).encode(metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "sluicegate_plugin_refused",
            "Plugin files refused at their last load (1 while the refusal stands)",
            None,
            MetricType::Gauge,
        )?;
        for r in self.0.refused() {
            let labels = [("plugin", r.name.as_str())];
            ConstGauge::new(1i64).encode(metric.encode_family(&labels)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::RuntimeOptions;

    fn metrics() -> Metrics {
        Metrics::new(PluginRuntime::new(RuntimeOptions::default()).unwrap())
    }

    /// The sample lines of `text` that mention `needle`.
    fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(needle))
            .collect()
    }

    /// Everything a cluster with endpoints `a` and `b` writes, as the config build and traffic do.
    fn serve(m: &Metrics) -> (Vec<EndpointMetrics>, ClusterMetrics) {
        let endpoints: Vec<_> = ["10.0.0.1:80", "10.0.0.2:80"]
            .iter()
            .map(|e| m.endpoint("web", e))
            .collect();
        let cluster = m.cluster("web");
        for e in &endpoints {
            e.count(200);
        }
        cluster
            .duration
            .observe(std::time::Duration::from_millis(3));
        cluster.retries.inc();
        let h = m.health();
        for e in ["10.0.0.1:80", "10.0.0.2:80"] {
            h.probe("web", e, true);
            h.transition("web", e, "down");
            h.set_healthy("web", e, true);
            m.l4.bytes("web", e, "client_to_upstream").inc();
            m.l4.connections
                .get_or_create(&L4Metrics::labels("web", e))
                .inc();
        }
        h.set_panic("web", false);
        (endpoints, cluster)
    }

    #[test]
    fn series_of_an_endpoint_go_with_the_last_config_that_has_it() {
        let m = metrics();
        let (mut endpoints, cluster) = serve(&m);
        let health = m.health().leases("web", ["10.0.0.1:80", "10.0.0.2:80"]);
        // The next config keeps 10.0.0.1 only: 10.0.0.2's series stay while the old one lives.
        let next = m.endpoint("web", "10.0.0.1:80");
        let next_health = m.health().leases("web", ["10.0.0.1:80"]);
        let next_cluster = m.cluster("web");
        let b = lines_with(&m.encode(), "10.0.0.2:80").len();
        assert_eq!(
            b,
            5 + 1 + 1 + 1 + 2,
            "requests, probes, transitions, healthy, tcp"
        );

        drop((endpoints.remove(1), health, cluster));
        assert_eq!(
            lines_with(&m.encode(), "10.0.0.2:80"),
            [] as [&str; 0],
            "still counted"
        );
        assert_eq!(
            lines_with(&m.encode(), "10.0.0.1:80").len(),
            10,
            "the kept one stays"
        );
        assert_eq!(
            lines_with(&m.encode(), "sluicegate_retries_total{").len(),
            1
        );

        // An endpoint that comes back starts afresh.
        let back = m.endpoint("web", "10.0.0.2:80");
        back.count(500);
        assert_eq!(
            lines_with(&m.encode(), "10.0.0.2:80\",class=\"5xx\""),
            ["sluicegate_requests_total{cluster=\"web\",endpoint=\"10.0.0.2:80\",class=\"5xx\"} 1"]
        );

        // The whole cluster goes: only the unrouted requests stay.
        drop((endpoints, next, next_health, next_cluster, back));
        let text = m.encode();
        assert_eq!(lines_with(&text, "web"), [] as [&str; 0]);
        assert_eq!(lines_with(&text, "sluicegate_requests_total{").len(), 5);
        assert!(
            m.leases.counts.lock().unwrap().len() == 1,
            "the unrouted lease"
        );
    }

    #[test]
    fn series_come_out_sorted_by_label_values_whatever_the_order_they_were_made_in() {
        // Two registries (two hash seeds), the same series made in opposite orders.
        let names: Vec<String> = (0..40)
            .map(|i| format!("10.0.{}.{}:{}", i % 3, i * 7 % 40, 8000 + i * 13 % 11))
            .collect();
        let encode = |order: &mut dyn Iterator<Item = (usize, &String)>| {
            let m = metrics();
            let (mut kept, mut clusters) = (Vec::new(), Vec::new());
            for (i, e) in order {
                let c = if i % 2 == 0 { "b" } else { "a" };
                let em = m.endpoint(c, e);
                em.count(200 + 100 * (i as u16 % 4));
                kept.push(em);
                let cm = m.cluster(c);
                cm.duration
                    .observe(std::time::Duration::from_micros(i as u64 * 97));
                clusters.push(cm);
                m.health().set_healthy(c, e, i % 3 == 0);
                m.worker_connections(&i.to_string()).inc();
                m.fallback(&format!("p{}", i % 7), "balancer");
            }
            m.encode()
        };
        let one = encode(&mut names.iter().enumerate());
        let two = encode(&mut names.iter().enumerate().rev());
        assert_eq!(one, two);

        // Within each family, label values ascend (digit runs by value); histogram lines of one
        // series stay together: sum, count, then buckets by `le`.
        let mut family = "";
        let mut previous: Option<Vec<&str>> = None;
        for line in one.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap();
                previous = None;
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let key = label_values(line);
            if let Some(p) = &previous {
                let order = p
                    .iter()
                    .zip(&key)
                    .map(|(x, y)| natural_cmp(x, y))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal);
                assert_ne!(order, Ordering::Greater, "{family}: {line} after {p:?}");
            }
            previous = Some(key);
        }
        let workers: Vec<&str> = lines_with(&one, "sluicegate_worker_connections_total{")
            .iter()
            .map(|l| l.split('"').nth(1).unwrap())
            .collect();
        let want: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        assert_eq!(workers, want);
        let a_duration: Vec<&str> = lines_with(&one, "_seconds")
            .into_iter()
            .filter(|l| l.contains("cluster=\"a\""))
            .collect();
        assert!(a_duration[0].starts_with("sluicegate_request_duration_seconds_sum{"));
        assert!(a_duration[1].starts_with("sluicegate_request_duration_seconds_count{"));
        assert!(a_duration.last().unwrap().contains("le=\"+Inf\""));
        assert_eq!(a_duration.len(), 2 + 17);
        assert!(one.ends_with("# EOF\n"));
    }

    #[test]
    fn sorting_keeps_families_in_order_and_reads_escaped_label_values() {
        let text = "# HELP z last family, first registered.\n# TYPE z counter\n\
                    z_total{k=\"b\\\"}\",n=\"2\"} 1\nz_created{k=\"b\\\"}\",n=\"2\"} 0\n\
                    z_total{k=\"a\",n=\"10\"} 2\nz_total{k=\"a\",n=\"9\"} 3\n\
                    # HELP a second.\n# TYPE a gauge\na 4\n# EOF\n";
        assert_eq!(
            sort_series(text),
            "# HELP z last family, first registered.\n# TYPE z counter\n\
             z_total{k=\"a\",n=\"9\"} 3\nz_total{k=\"a\",n=\"10\"} 2\n\
             z_total{k=\"b\\\"}\",n=\"2\"} 1\nz_created{k=\"b\\\"}\",n=\"2\"} 0\n\
             # HELP a second.\n# TYPE a gauge\na 4\n# EOF\n"
        );
        assert_eq!(natural_cmp("10.0.0.2:80", "10.0.0.10:80"), Ordering::Less);
        assert_eq!(natural_cmp("a02", "a2"), Ordering::Greater);
        assert_eq!(natural_cmp("", "0"), Ordering::Less);
        assert_eq!(natural_cmp("x9y", "x9y"), Ordering::Equal);
    }
}
