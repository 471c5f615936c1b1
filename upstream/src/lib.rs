//! The upstream side of the proxy: our own HTTP/1.1 client (`h1`, driven by the request's own task), the
//! per-worker keep-alive connection pool, the request bodies it sends, the TLS client, and the retry
//! budget. It knows nothing of clusters, balancers or health: the proxy hands it an endpoint index and
//! an address, and gets back a response or a typed error that says whether a retry may follow.

mod body;
pub mod h1;
mod pool;
mod retry;
pub mod tls;

pub use body::{AttemptBody, BoxError, RequestBody, RequestBodyError};
pub use pool::{Pool, UpstreamBody, UpstreamError};
pub use retry::{ActiveRequest, RetryBudget, RetryPermit};

/// An endpoint's index in its cluster (the id balancers pick), which keys the pool's per-endpoint lists.
pub type EndpointId = u32;

/// `authority` without its port, for matching (`[::1]:80` keeps its brackets).
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}
