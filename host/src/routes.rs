//! The host-side route table: `[[routes]]` entries matched by host and path prefix, first match
//! wins. Used when no router plugin is configured.

use crate::config::Route;

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

    /// The cluster index for a request to `host` (no port; any case) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .find(|(r, _)| {
                host_matches(r.host.as_deref(), host) && path.starts_with(&r.path_prefix)
            })
            .map(|(_, i)| *i)
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

    #[test]
    fn first_match_wins() {
        let t = table();
        assert_eq!(t.route(Some("api.example.com"), "/v1/users"), Some(0));
        assert_eq!(t.route(Some("API.Example.com"), "/v2/users"), Some(1));
        assert_eq!(t.route(Some("acme.example.com"), "/static/x.css"), Some(2));
        assert_eq!(t.route(Some("other.org"), "/static/x.css"), Some(3));
        assert_eq!(t.route(None, "/index.html"), Some(4));
    }

    #[test]
    fn wildcards_need_a_subdomain_and_unmatched_requests_get_none() {
        let t = RouteTable::new(&[route(Some("*.example.com"), "/", "t")], |_| Some(0));
        assert_eq!(t.route(Some("example.com"), "/"), None);
        assert_eq!(t.route(Some("a.example.com"), "/"), Some(0));
        assert_eq!(t.route(None, "/"), None);
        let t = RouteTable::new(&[route(None, "/api", "a")], |_| Some(0));
        assert_eq!(t.route(Some("x"), "/web"), None);
    }
}
