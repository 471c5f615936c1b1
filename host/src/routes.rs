//! The host-side route table: `[[routes]]` entries matched by host and path prefix, first match
//! wins. Used when no router plugin is configured.

use crate::config::Route;

/// What the matched route says about a request beyond its cluster: read off the route on the match
/// (two plain fields, no lookup), so the request path gets them with the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RouteSettings {
    /// The route's own body limit.
    pub(crate) max_request_body: Option<u64>,
    /// Whether requests may switch protocols on this route.
    pub(crate) upgrade: bool,
}

impl RouteSettings {
    /// A request routed without a `[[routes]]` entry (by a router plugin): no limit of a route's
    /// own, upgrades allowed (the keys' defaults).
    pub(crate) const DEFAULT: RouteSettings = RouteSettings {
        max_request_body: None,
        upgrade: true,
    };
}

/// A compiled route table: each route points at a cluster by index.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<(Route, usize)>,
}

impl RouteTable {
    /// Builds the table; `cluster_index` maps a cluster name to its index (names were validated).
    pub fn new(routes: &[Route], cluster_index: impl Fn(&str) -> Option<usize>) -> Self {
        RouteTable {
            routes: routes
                .iter()
                .filter_map(|r| cluster_index(&r.cluster).map(|i| (r.clone(), i)))
                .collect(),
        }
    }

    /// The cluster index for a request to `host` (no port; any case) and `path`, with the
    /// matched route's settings.
    pub(crate) fn route(&self, host: Option<&str>, path: &str) -> Option<(usize, RouteSettings)> {
        self.routes
            .iter()
            .find(|(r, _)| {
                host_matches(r.host.as_deref(), host) && path.starts_with(&r.path_prefix)
            })
            .map(|(r, i)| {
                (
                    *i,
                    RouteSettings {
                        max_request_body: r.max_request_body,
                        upgrade: r.upgrade,
                    },
                )
            })
    }
}

/// `pattern` is lower case: an exact host, `*.suffix` for any subdomain, or `None` for any host.
fn host_matches(pattern: Option<&str>, host: Option<&str>) -> bool {
    let Some(pattern) = pattern else { return true };
    let Some(host) = host else { return false };
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => host.eq_ignore_ascii_case(pattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str, cluster: &str) -> Route {
        Route {
            host: host.map(str::to_string),
            path_prefix: prefix.to_string(),
            cluster: cluster.to_string(),
            max_request_body: None,
            upgrade: true,
        }
    }

    fn table() -> RouteTable {
        let routes = [
            route(Some("api.example.com"), "/v1/", "api-v1"),
            route(Some("api.example.com"), "/", "api"),
            route(Some("*.example.com"), "/", "tenants"),
            route(None, "/static/", "static"),
            route(None, "/", "web"),
        ];
        let names = ["api-v1", "api", "tenants", "static", "web"];
        RouteTable::new(&routes, |n| names.iter().position(|x| *x == n))
    }

    impl RouteTable {
        fn index(&self, host: Option<&str>, path: &str) -> Option<usize> {
            self.route(host, path).map(|(i, _)| i)
        }
    }

    #[test]
    fn first_match_wins() {
        let t = table();
        assert_eq!(t.index(Some("api.example.com"), "/v1/users"), Some(0));
        assert_eq!(t.index(Some("API.Example.com"), "/v2/users"), Some(1));
        assert_eq!(t.index(Some("acme.example.com"), "/static/x.css"), Some(2));
        assert_eq!(t.index(Some("other.org"), "/static/x.css"), Some(3));
        assert_eq!(t.index(None, "/index.html"), Some(4));
    }

    #[test]
    fn wildcards_need_a_subdomain_and_unmatched_requests_get_none() {
        let t = RouteTable::new(&[route(Some("*.example.com"), "/", "t")], |_| Some(0));
        assert_eq!(t.index(Some("example.com"), "/"), None);
        assert_eq!(t.index(Some("a.example.com"), "/"), Some(0));
        assert_eq!(t.index(None, "/"), None);
        let t = RouteTable::new(&[route(None, "/api", "a")], |_| Some(0));
        assert_eq!(t.index(Some("x"), "/web"), None);
    }

    #[test]
    fn a_match_carries_its_routes_settings() {
        let mut closed = route(None, "/ws", "a");
        closed.upgrade = false;
        closed.max_request_body = Some(1024);
        let t = RouteTable::new(&[closed, route(None, "/", "b")], |n| {
            Some(usize::from(n == "b"))
        });
        let want = RouteSettings {
            max_request_body: Some(1024),
            upgrade: false,
        };
        assert_eq!(t.route(None, "/ws/chat"), Some((0, want)));
        assert_eq!(t.route(None, "/x"), Some((1, RouteSettings::DEFAULT)));
    }
}
