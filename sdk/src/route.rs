//! Turning a router's answer into what crosses to the proxy: an index into the proxy's cluster
//! list, or a local answer. Shared by the Wasm glue and the native test harness, so a router
//! behaves the same in both.

use crate::{LocalResponse, RouteDecision};

/// The proxy's cluster names, in the order a route answer indexes them (what `init` was given).
pub(crate) struct ClusterNames {
    names: Vec<String>,
    /// For lookups in longer lists; a short one is scanned.
    index: std::collections::HashMap<String, u32>,
}

/// A route answer as the proxy acts on it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// Forward to the cluster at this index.
    Cluster(u32),
    /// Answer the client directly.
    Respond(LocalResponse),
}

impl ClusterNames {
    const SCAN_UP_TO: usize = 16;

    pub(crate) fn new(names: Vec<String>) -> Self {
        let index = if names.len() > Self::SCAN_UP_TO {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i as u32))
                .collect()
        } else {
            Default::default()
        };
        ClusterNames { names, index }
    }

    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    fn find(&self, name: &str) -> Option<u32> {
        if self.names.len() > Self::SCAN_UP_TO {
            self.index.get(name).copied()
        } else {
            self.names.iter().position(|n| n == name).map(|i| i as u32)
        }
    }

    /// What the proxy does with `decision`. A name that is not a cluster, or an index outside the
    /// list, is logged and answered 502 with the reason (as the proxy did when routers answered names).
    pub(crate) fn resolve(&self, decision: RouteDecision) -> Resolved {
        let unknown = match decision {
            RouteDecision::Respond(r) => return Resolved::Respond(r),
            RouteDecision::ClusterIndex(i) if (i as usize) < self.names.len() => {
                return Resolved::Cluster(i);
            }
            RouteDecision::Cluster(name) => match self.find(&name) {
                Some(i) => return Resolved::Cluster(i),
                None => format!("router chose unknown cluster {name}"),
            },
            RouteDecision::ClusterIndex(i) => format!(
                "router chose cluster index {i}, but there are {} clusters",
                self.names.len()
            ),
        };
        crate::host::warn(&unknown);
        Resolved::Respond(LocalResponse::text(502, format!("{unknown}\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> ClusterNames {
        ClusterNames::new((0..n).map(|i| format!("c{i}")).collect())
    }

    #[test]
    fn names_and_indexes_resolve_in_short_and_long_lists() {
        for n in [3, 40] {
            let c = names(n);
            assert_eq!(
                c.resolve(RouteDecision::cluster("c2")),
                Resolved::Cluster(2)
            );
            assert_eq!(
                c.resolve(RouteDecision::cluster(format!("c{}", n - 1))),
                Resolved::Cluster(n as u32 - 1)
            );
            assert_eq!(
                c.resolve(RouteDecision::ClusterIndex(1)),
                Resolved::Cluster(1)
            );
        }
    }

    #[test]
    fn unknown_names_and_indexes_out_of_range_are_answered_502_with_the_reason() {
        for (d, reason) in [
            (RouteDecision::cluster("nope"), "unknown cluster nope"),
            (
                RouteDecision::ClusterIndex(3),
                "index 3, but there are 3 clusters",
            ),
        ] {
            match names(3).resolve(d) {
                Resolved::Respond(r) => {
                    assert_eq!(r.status, 502);
                    let body = String::from_utf8(r.body).unwrap();
                    assert!(body.contains(reason), "{body}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
