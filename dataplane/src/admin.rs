//! The admin server: health, readiness, metrics and status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::balance::FarmRt;
use crate::metrics::{FarmEndpointCounts, Serving};
use crate::runtime::Shared;

/// Serves the admin endpoints until shutdown completes.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                move |req: http::Request<hyper::body::Incoming>| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&shared, req.uri().path())) }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn answer(shared: &Shared, path: &str) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, ct: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ct),
        );
        r
    };
    match path {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if shared.is_ready() {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        "/metrics" => {
            let _scrape = shared.metrics.scrape.lock();
            shared.metrics.set_serving(&serving(shared));
            let mut out = String::new();
            let _ = prometheus_client::encoding::text::encode(&mut out, &shared.registry);
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                out,
            )
        }
        "/status" => {
            let hash = shared
                .snapshot
                .load()
                .as_ref()
                .map(|s| s.hash.clone())
                .unwrap_or_default();
            let body = serde_json::json!({
                "configHash": hash,
                "keyIds": shared.key_ids(),
                "ready": shared.is_ready(),
                "connections": shared.connections.load(Ordering::Relaxed),
                "connectionsWaiting": shared.metrics.connections_waiting.get(),
                "lastReload": shared.last_reload.lock().clone(),
            });
            text(StatusCode::OK, "application/json", body.to_string())
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// What the member serves now: the gauges a scrape sets rather than the request path,
/// which stays free of the bookkeeping.
fn serving(shared: &Shared) -> Serving {
    let snapshot = shared.snapshot.load();
    let active = shared.session.active_key_id();
    Serving {
        config_hash: snapshot.as_ref().map(|s| s.hash.clone()),
        keys: shared
            .key_ids()
            .into_iter()
            .map(|id| {
                let is_active = active.as_deref() == Some(id.as_str());
                (id, is_active)
            })
            .collect(),
        farms: snapshot
            .as_ref()
            .map(|s| {
                s.farms
                    .iter()
                    .map(|(id, farm)| (id.clone(), endpoint_counts(farm)))
                    .collect()
            })
            .unwrap_or_default(),
        in_service: snapshot
            .as_ref()
            .map(|s| {
                s.farms
                    .iter()
                    .flat_map(|(id, farm)| {
                        farm.endpoints
                            .iter()
                            .enumerate()
                            .map(move |(i, e)| (id.clone(), e.endpoint.key.clone(), farm.usable(i)))
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn endpoint_counts(farm: &FarmRt) -> FarmEndpointCounts {
    let total = farm.endpoints.len();
    let ejected = farm
        .endpoints
        .iter()
        .filter(|e| match *e.endpoint.ejected_at.lock() {
            None => false,
            // With a verifier only the verifier lets it back (as `FarmRt::usable`).
            Some(_) if e.probe.is_some() => true,
            Some(at) => at.elapsed() < farm.cfg.passive.base_ejection_time.get(),
        })
        .count();
    FarmEndpointCounts {
        total,
        usable: (0..total).filter(|i| farm.usable(*i)).count(),
        ejected,
    }
}

/// Binds the admin address (`[::]` takes both families).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::bind::listen(addr, 128)
}
