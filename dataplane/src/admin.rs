//! The admin server: health, readiness, metrics and status.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the admin server shows of the member, which it knows only through this view
/// (the runtime implements it).
pub(crate) trait View: Send + Sync + 'static {
    /// Serving: not draining, listening, and a config loaded.
    fn ready(&self) -> bool;
    /// The OpenMetrics text of every metric.
    fn metrics(&self) -> String;
    /// The `/status` document.
    fn status(&self) -> serde_json::Value;
}

/// Serves the admin endpoints until shutdown completes.
pub(crate) async fn serve(view: Arc<dyn View>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let view = view.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                move |req: http::Request<hyper::body::Incoming>| {
                    let view = view.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&*view, req.uri().path())) }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn answer(view: &dyn View, path: &str) -> Response<Full<Bytes>> {
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
            if view.ready() {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            view.metrics(),
        ),
        "/status" => text(
            StatusCode::OK,
            "application/json",
            view.status().to_string(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Binds the admin address (`[::]` takes both families).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::bind::listen(addr, 128)
}
