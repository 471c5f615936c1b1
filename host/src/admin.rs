//! The admin listener: `/status` (JSON: clusters, endpoints, plugins), `/metrics` (Prometheus
//! text) and `/ready` (200 while serving, 503 while draining). Loopback by default.

use crate::config::FilterFault;
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
use tokio::sync::watch;

/// Serves the admin API on `listener` until `stop` changes.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, mut stop: watch::Receiver<bool>) {
    while let Some((stream, _)) = crate::accept::accept(&listener, &mut stop).await {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(handle(&proxy, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn handle(proxy: &Proxy, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/status" => reply(
            StatusCode::OK,
            "application/json",
            status(proxy).to_string(),
        ),
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
