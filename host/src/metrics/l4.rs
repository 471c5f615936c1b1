//! The L4 proxy's figures (and TLS handshake failures of https listeners), beside the others so that
//! the metrics module depends on no layer it counts for.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointLabels {
    cluster: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BytesLabels {
    cluster: String,
    endpoint: String,
    direction: &'static str,
}

/// The `direction` labels of `sluicegate_tcp_bytes`.
const DIRECTIONS: [&str; 2] = ["client_to_upstream", "upstream_to_client"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusedLabels {
    listener: String,
    reason: &'static str,
}

/// L4 figures (and TLS handshake failures of https listeners). Label lookups happen once per
/// connection, never per byte.
#[derive(Clone, Debug, Default)]
pub struct L4Metrics {
    pub(crate) connections: Family<EndpointLabels, Counter>,
    pub(crate) connect_failures: Family<EndpointLabels, Counter>,
    pub(crate) bytes: Family<BytesLabels, Counter>,
    pub(crate) refused: Family<RefusedLabels, Counter>,
    pub(crate) tls_handshake_failures: Family<RefusedLabels, Counter>,
}

impl L4Metrics {
    /// Registers the families in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sluicegate_tcp_connections",
            "L4 connections established to an endpoint, by cluster and endpoint",
            self.connections.clone(),
        );
        registry.register(
            "sluicegate_tcp_connect_failures",
            "L4 connect attempts that failed or timed out, by cluster and endpoint",
            self.connect_failures.clone(),
        );
        registry.register(
            "sluicegate_tcp_bytes",
            "L4 bytes copied, by cluster, endpoint and direction (client_to_upstream, upstream_to_client)",
            self.bytes.clone(),
        );
        registry.register(
            "sluicegate_tcp_refused",
            "L4 connections closed before reaching an endpoint, by listener and reason",
            self.refused.clone(),
        );
        registry.register(
            "sluicegate_tls_handshake_failures",
            "TLS handshakes that failed on https listeners, by listener and reason (error, timeout)",
            self.tls_handshake_failures.clone(),
        );
    }

    /// Counts a failed TLS handshake on an `https` listener.
    pub fn tls_handshake_failed(&self, listener: SocketAddr, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&RefusedLabels {
                listener: listener.to_string(),
                reason,
            })
            .inc();
    }

    pub(crate) fn labels(cluster: &str, endpoint: &str) -> EndpointLabels {
        EndpointLabels {
            cluster: cluster.to_string(),
            endpoint: endpoint.to_string(),
        }
    }

    pub(crate) fn bytes(&self, cluster: &str, endpoint: &str, direction: &'static str) -> Counter {
        debug_assert!(DIRECTIONS.contains(&direction), "{direction}");
        self.bytes
            .get_or_create(&BytesLabels {
                cluster: cluster.to_string(),
                endpoint: endpoint.to_string(),
                direction,
            })
            .clone()
    }

    pub(crate) fn refused(&self, listener: SocketAddr, reason: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_string(),
                reason,
            })
            .inc();
    }

    /// Removes every series of `endpoint` of `cluster` (a reload removed it).
    pub(crate) fn remove(&self, cluster: &str, endpoint: &str) {
        let labels = Self::labels(cluster, endpoint);
        self.connections.remove(&labels);
        self.connect_failures.remove(&labels);
        for direction in DIRECTIONS {
            self.bytes.remove(&BytesLabels {
                cluster: labels.cluster.clone(),
                endpoint: labels.endpoint.clone(),
                direction,
            });
        }
    }
}
