//! The admin listener: `/status` (JSON: clusters, endpoints, plugins, connection limits),
//! `/metrics` (Prometheus text) and `/ready` (200 while serving, 503 while draining). Loopback by
//! default.
//!
//! It has its own bounds, apart from the client listeners' caps, so that clients cannot starve it
//! and it cannot take their descriptors: at most `[limits] admin_max_connections` connections at
//! once (further ones wait in the backlog), each with `admin_timeout` to send a request head and
//! to stay idle.

use crate::client_io::{ClientInfo, ClientIo};
use crate::config::{FilterFault, ListenerLimits};
use crate::conn_limit::ConnLimits;
use crate::gateway::{Router, RouterFallback};
use crate::proxy::Proxy;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Serves the admin API on `listener` until `stop` changes.
pub(crate) async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limits: Arc<ConnLimits>,
    mut stop: watch::Receiver<bool>,
) {
    let config = proxy.gateway().config.limits.clone();
    let slots = Arc::new(Semaphore::new(config.admin_max_connections));
    let timeout = config.admin_timeout;
    let conn_limits = Arc::new(ListenerLimits {
        send_timeout: timeout,
        ..ListenerLimits::default()
    });
    loop {
        // Nothing more is accepted while the admin listener is at its cap.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let Some((stream, peer)) = crate::accept::accept(&listener, &mut stop).await else {
            return;
        };
        let (proxy, limits) = (proxy.clone(), limits.clone());
        let client = Arc::new(ClientInfo::new(peer, "http", conn_limits.clone()));
        tokio::spawn(async move {
            // The request head and the idle time are bounded as on a client listener.
            let io = ClientIo::new(stream, client.clone(), timeout, timeout);
            let service = service_fn(move |req: Request<Incoming>| {
                let (proxy, limits, client) = (proxy.clone(), limits.clone(), client.clone());
                async move {
                    client.phase.request_started(req.version());
                    let resp = handle(&proxy, &limits, req);
                    client.phase.request_ended(false);
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .await;
            drop(permit);
        });
    }
}

fn handle(proxy: &Proxy, limits: &ConnLimits, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/status" => {
            let mut doc = status(proxy);
            doc["limits"] = limits_status(proxy, limits);
            reply(StatusCode::OK, "application/json", doc.to_string())
        }
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            proxy.metrics.encode(),
        ),
        "/ready" if proxy.draining() => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".into(),
        ),
        "/ready" => reply(StatusCode::OK, "text/plain", "ready\n".into()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /status, /metrics or /ready\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}

/// The `/status` document.
pub fn status(proxy: &Proxy) -> serde_json::Value {
    let gateway = proxy.gateway();
    let clusters: Vec<_> = gateway
        .clusters
        .iter()
        .map(|c| {
            let endpoints: Vec<_> = c
                .endpoints
                .iter()
                .map(|e| {
                    let stats = c.facts.get(e.id);
                    json!({
                        "id": e.id,
                        "address": e.address,
                        "weight": e.weight,
                        "metadata": e.metadata.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                        "healthy": c.health.healthy(e.id),
                        "health": c.health.endpoint_status(e.id),
                        "in_flight": stats.map_or(0, |s| s.in_flight()),
                        "latency_ewma_micros": stats.map_or(0, |s| s.latency_ewma_micros()),
                    })
                })
                .collect();
            json!({
                "name": c.config.name,
                "balancer": c.balancer.plugin(),
                "balancer_breaker": c.balancer.breaker(),
                "fallback_balancer": c.fallback.plugin(),
                "retries_in_flight": c.budget.retries_in_flight(),
                "panic": c.health.panic(),
                "endpoints": endpoints,
            })
        })
        .collect();
    let reload = proxy.reload_state();
    json!({
        "config": gateway.config.file,
        "draining": proxy.draining(),
        "reloads": reload.reloads,
        "last_reload_error": reload.last_error,
        "router": router_status(&gateway.router),
        "filters": gateway.filters.iter().map(|f| json!({
            "plugin": f.handle.plugin(),
            "on_fault": match f.on_fault { FilterFault::Skip => "skip", FilterFault::Reject => "reject" },
            "breaker": f.handle.breaker(),
        })).collect::<Vec<_>>(),
        "clusters": clusters,
        "plugins": proxy.runtime.plugins(),
        "refused_plugins": proxy.runtime.refused(),
    })
}

/// The connection limits in force: the descriptor limit obtained, the global cap and what each
/// listener adds, and the admin listener's bounds.
fn limits_status(proxy: &Proxy, limits: &ConnLimits) -> serde_json::Value {
    let gateway = proxy.gateway();
    let config = &gateway.config;
    json!({
        "nofile": limits.nofile,
        "max_connections": limits.max_connections,
        "reserved_descriptors": config.limits.reserved_descriptors,
        "open_connections": limits.open(),
        "admin_max_connections": config.limits.admin_max_connections,
        "admin_timeout_ms": config.limits.admin_timeout.as_millis() as u64,
        "listeners": config.listeners.iter().map(|l| json!({
            "address": l.address,
            "max_connections": l.limits.max_connections,
            "send_timeout_ms": l.limits.send_timeout.as_millis() as u64,
            "max_header_size": l.limits.max_header_size,
            "max_headers": l.limits.max_headers,
            "h2_max_concurrent_streams": l.limits.h2_max_concurrent_streams,
        })).collect::<Vec<_>>(),
    })
}

/// The router plugin and its breaker (`null` for a route table).
fn router_status(router: &Router) -> serde_json::Value {
    match router {
        Router::Table(_) => serde_json::Value::Null,
        Router::Plugin(r, fallback) => json!({
            "plugin": r.plugin(),
            "breaker": r.breaker(),
            "on_fault": match fallback {
                RouterFallback::Respond(status) => json!({ "respond": status.as_u16() }),
                RouterFallback::Table(_) => json!("routes"),
                RouterFallback::Plugin(other) => json!({ "router": other.plugin(), "breaker": other.breaker() }),
            },
        }),
    }
}
