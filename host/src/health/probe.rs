//! One active probe: a TCP connect, or an HTTP/1.1 request on a fresh connection of its own (never
//! the client traffic pool, so a probe neither waits for nor disturbs real requests). The body is
//! read only up to a bounded prefix. For a cluster with `[clusters.tls]` the probe speaks TLS with
//! the cluster's settings (so a TCP check is a TLS handshake check).

use crate::config::ProbeKind;
use crate::plugin::{EndpointId, Failure, ProbeResult};
use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// TLS for the probes of a cluster whose endpoints speak TLS.
#[derive(Clone, Debug)]
pub struct ProbeTls {
    /// The cluster's client config (trusted CAs, client certificate).
    pub config: Arc<rustls::ClientConfig>,
    /// The name sent as SNI and verified; `None` for the endpoint's host.
    pub server_name: Option<String>,
}

/// Probes `address` once within `timeout`.
pub async fn probe(
    kind: &ProbeKind,
    id: EndpointId,
    address: &str,
    timeout: Duration,
    body_prefix_bytes: usize,
    tls: Option<&ProbeTls>,
) -> ProbeResult {
    let start = Instant::now();
    let mut result = ProbeResult {
        endpoint: id,
        status: None,
        headers: Vec::new(),
        body_prefix: Vec::new(),
        failure: None,
        duration_micros: 0,
    };
    let outcome = tokio::time::timeout(
        timeout,
        run(kind, address, timeout, body_prefix_bytes, tls, &mut result),
    )
    .await;
    match outcome {
        Err(_) => result.failure = Some(Failure::Timeout),
        Ok(Err(f)) => result.failure = Some(f),
        Ok(Ok(())) => {}
    }
    result.duration_micros = start.elapsed().as_micros() as u64;
    result
}

async fn run(
    kind: &ProbeKind,
    address: &str,
    timeout: Duration,
    body_prefix_bytes: usize,
    tls: Option<&ProbeTls>,
    result: &mut ProbeResult,
) -> Result<(), Failure> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|_| Failure::Connect)?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return exchange(kind, stream, address, timeout, body_prefix_bytes, result).await;
    };
    let name = match &tls.server_name {
        Some(n) => n.clone(),
        None => address
            .parse::<http::uri::Authority>()
            .map(|a| a.host().trim_matches(['[', ']']).to_string())
            .map_err(|_| Failure::Protocol)?,
    };
    let name = rustls_pki_types::ServerName::try_from(name).map_err(|_| Failure::Protocol)?;
    // A failed handshake (an untrusted or wrong certificate) is a protocol failure.
    let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(name, stream)
        .await
        .map_err(|_| Failure::Protocol)?;
    exchange(kind, stream, address, timeout, body_prefix_bytes, result).await
}

/// The HTTP part of a probe on an open connection (nothing more for a TCP check).
async fn exchange<S>(
    kind: &ProbeKind,
    stream: S,
    address: &str,
    timeout: Duration,
    body_prefix_bytes: usize,
    result: &mut ProbeResult,
) -> Result<(), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ProbeKind::Http {
        method, path, host, ..
    } = kind
    else {
        return Ok(());
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Failure::Reset)?;
    // The connection closes after this one request, or when a timed-out probe drops its side;
    // the deadline bounds the task in any case, so probes never pile up connections.
    tokio::spawn(async move {
        let _ = tokio::time::timeout(timeout, conn).await;
    });
    let req = http::Request::builder()
        .method(method.clone())
        .uri(path.as_str())
        .header(HOST, host.as_deref().unwrap_or(address))
        .header(USER_AGENT, "sluicegate-health-check")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|_| Failure::Protocol)?;
    let resp = sender.send_request(req).await.map_err(hyper_failure)?;
    result.status = Some(resp.status().as_u16());
    result.headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = resp.into_body();
    while result.body_prefix.len() < body_prefix_bytes {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(hyper_failure(e)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = body_prefix_bytes - result.body_prefix.len();
                    result
                        .body_prefix
                        .extend_from_slice(&data[..data.len().min(room)]);
                }
            }
        }
    }
    Ok(())
}

fn hyper_failure(e: hyper::Error) -> Failure {
    if e.is_parse() || e.is_user() {
        Failure::Protocol
    } else {
        Failure::Reset
    }
}

/// The host's rule for a probe: a connection for TCP; for HTTP an expected status (any 2xx or 3xx
/// when none is listed) and, when asked, the text within the body prefix.
pub fn passes(kind: &ProbeKind, result: &ProbeResult) -> bool {
    if result.failure.is_some() {
        return false;
    }
    match kind {
        ProbeKind::Tcp => true,
        ProbeKind::Http {
            expect,
            body_contains,
            ..
        } => {
            let Some(status) = result.status else {
                return false;
            };
            let status_ok = if expect.is_empty() {
                (200..400).contains(&status)
            } else {
                expect.contains(&status)
            };
            status_ok
                && body_contains.as_ref().is_none_or(|needle| {
                    let needle = needle.as_bytes();
                    needle.is_empty()
                        || result
                            .body_prefix
                            .windows(needle.len())
                            .any(|w| w == needle)
                })
        }
    }
}

/// A short description of a probe result for `/status` and logs.
pub fn describe(result: &ProbeResult) -> String {
    match (result.failure, result.status) {
        (Some(Failure::Connect), _) => "connect failure".into(),
        (Some(Failure::Reset), _) => "connection reset".into(),
        (Some(Failure::Timeout), _) => "timeout".into(),
        (Some(Failure::Protocol), _) => "protocol error".into(),
        (None, Some(s)) => format!("status {s}"),
        (None, None) => "connected".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(expect: Vec<u16>, body_contains: Option<&str>) -> ProbeKind {
        ProbeKind::Http {
            method: http::Method::GET,
            path: "/health".into(),
            host: None,
            expect,
            body_contains: body_contains.map(str::to_string),
        }
    }

    fn answered(status: u16, body: &str) -> ProbeResult {
        ProbeResult {
            endpoint: 0,
            status: Some(status),
            headers: Vec::new(),
            body_prefix: body.as_bytes().to_vec(),
            failure: None,
            duration_micros: 1,
        }
    }

    #[test]
    fn the_host_rule_checks_status_and_body() {
        assert!(passes(&http(vec![], None), &answered(204, "")));
        assert!(passes(&http(vec![], None), &answered(302, "")));
        assert!(!passes(&http(vec![], None), &answered(500, "")));
        assert!(!passes(&http(vec![200], None), &answered(204, "")));
        assert!(passes(
            &http(vec![200], Some("ok")),
            &answered(200, "{\"ok\":1}")
        ));
        assert!(!passes(
            &http(vec![200], Some("ok")),
            &answered(200, "fine")
        ));
        let mut failed = answered(200, "");
        failed.failure = Some(Failure::Reset);
        assert!(!passes(&http(vec![], None), &failed));
        assert!(!passes(&ProbeKind::Tcp, &failed));
    }

    #[tokio::test]
    async fn probes_a_real_listener_and_a_closed_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let r = probe(&ProbeKind::Tcp, 3, &addr, Duration::from_secs(5), 16, None).await;
        assert_eq!((r.endpoint, r.failure), (3, None));
        drop(listener);
        let r = probe(&ProbeKind::Tcp, 3, &addr, Duration::from_secs(5), 16, None).await;
        assert_eq!(r.failure, Some(Failure::Connect));
    }

    #[tokio::test]
    async fn an_http_probe_reads_status_headers_and_a_bounded_prefix() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            s.write_all(b"HTTP/1.1 200 OK\r\nx-load: 7\r\ncontent-length: 10\r\n\r\n0123456789")
                .await
                .unwrap();
            req
        });
        let r = probe(
            &http(vec![], None),
            1,
            &addr,
            Duration::from_secs(5),
            4,
            None,
        )
        .await;
        let req = server.await.unwrap();
        assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req}");
        assert!(
            req.to_ascii_lowercase().contains(&format!("host: {addr}")),
            "{req}"
        );
        assert_eq!(r.status, Some(200));
        assert_eq!(r.body_prefix, b"0123");
        assert!(r.headers.contains(&("x-load".into(), "7".into())));
    }

    #[tokio::test]
    async fn a_silent_endpoint_times_out_and_its_connection_is_closed() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            // Never answer; the probe's side must close the connection.
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await
        });
        let r = probe(
            &http(vec![], None),
            1,
            &addr,
            Duration::from_millis(100),
            4,
            None,
        )
        .await;
        assert_eq!(r.failure, Some(Failure::Timeout));
        let closed = server.await.unwrap();
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "the probe connection is closed: {closed:?}"
        );
    }
}
