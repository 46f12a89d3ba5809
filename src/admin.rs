//! The admin listener, for the orchestrator and the monitoring system: plain HTTP on a
//! separate (by default loopback) address, never on the proxy's ports.
//!
//! - `GET /healthz`: 200 while the process serves (liveness);
//! - `GET /readyz`: 200 when the config is loaded, the listeners are bound, the session
//!   store answers within its deadline and the server is not draining; 503 with the
//!   reason otherwise (readiness);
//! - `GET /metrics`: Prometheus text format.

use std::convert::Infallible;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

use crate::{full_body, Body};

/// What the admin endpoints read from the running server (`app::ServerHandle`).
pub trait AdminView: Clone + Send + Sync + 'static {
    /// `Err(why)` when this replica should not get traffic; `Ok(Some(why))` when it
    /// serves degraded (the store is down, but some routes work without it).
    fn ready(
        &self,
    ) -> impl std::future::Future<Output = Result<Option<&'static str>, &'static str>> + Send;
    /// The Prometheus text exposition.
    fn metrics(&self) -> String;
}

/// Serves until the task is aborted: it stays up while the proxy drains, so that the
/// orchestrator sees `/readyz` turn 503 and stops sending traffic.
pub async fn serve<H: AdminView>(listener: TcpListener, handle: H) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(respond(&handle, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = conn.await {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

async fn respond<H: AdminView>(handle: &H, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match handle.ready().await {
            Ok(None) => text(StatusCode::OK, "ready\n"),
            Ok(Some(why)) => text(StatusCode::OK, &format!("ready (degraded: {why})\n")),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let mut resp = Response::new(full_body(handle.metrics()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "try /healthz, /readyz or /metrics\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(full_body(body.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
