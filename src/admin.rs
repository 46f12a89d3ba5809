//! The admin listener, for the orchestrator and the monitoring system: plain HTTP on a
//! separate (by default loopback) address, never on the proxy's ports.
//!
//! - `GET /healthz`: 200 while the process serves (liveness);
//! - `GET /readyz`: 200 when the config is loaded, the listeners are bound, the session
//!   store answers within its deadline and the server is not draining; 503 with the
//!   reason otherwise (readiness); a second line names the routes in observe mode;
//! - `GET /metrics`: Prometheus text format;
//! - `POST /sessions/revoke?subject=NAME` with an `X-Sessiongate-Admin` header: ends
//!   every session signed in as NAME ("log out alice everywhere", for incident response),
//!   audited and counted; answers how many it ended. The header is there so that a web
//!   page cannot make a browser on the admin host send the request (a cross-origin
//!   request with a custom header needs a preflight this listener never grants).

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
    /// The session routes in observe mode (nothing enforced), for `/readyz`.
    fn observing(&self) -> Vec<String>;
    /// Who may revoke: the config's token, and whether the listener is on loopback.
    fn revoke_access(&self) -> RevokeAccess;
    /// Ends every session signed in as `subject`; how many it ended.
    fn revoke_subject(
        &self,
        subject: &str,
    ) -> impl std::future::Future<Output = Result<usize, String>> + Send;
}

/// The path of the revocation endpoint, and the header it requires.
pub const REVOKE_PATH: &str = "/sessions/revoke";
pub const REVOKE_HEADER: &str = "x-sessiongate-admin";

/// Who may use the revocation endpoint.
pub enum RevokeAccess {
    /// Whoever reaches the listener (it is on loopback, and no token is set).
    Local,
    /// Only a request with `Authorization: Bearer <token>` (`admin.token_file`).
    Token(crate::config::Secret),
    /// Nobody: the listener is not on loopback and no token is set.
    Closed,
}

/// A `Host` that names an address, not a domain: a page whose domain was re-pointed at
/// the admin listener (DNS rebinding) sends its own domain.
fn host_is_an_address(req: &Request<Incoming>) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Whether the request presents the token (compared as digests, so that the time taken
/// says nothing about how much of it matched).
fn presents(req: &Request<Incoming>, token: &crate::config::Secret) -> bool {
    use sha2::{Digest, Sha256};
    let sent = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    Sha256::digest(sent.trim().as_bytes()) == Sha256::digest(token.0.as_bytes())
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
    if req.uri().path() == REVOKE_PATH {
        return revoke(handle, &req).await;
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let observing = handle.observing();
            let note = match observing.is_empty() {
                true => String::new(),
                false => format!(
                    "observe mode, nothing enforced, on route(s): {}\n",
                    observing.join(", ")
                ),
            };
            match handle.ready().await {
                Ok(None) => text(StatusCode::OK, &format!("ready\n{note}")),
                Ok(Some(why)) => text(StatusCode::OK, &format!("ready (degraded: {why})\n{note}")),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {why}\n{note}"),
                ),
            }
        }
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
        _ => text(
            StatusCode::NOT_FOUND,
            "try /healthz, /readyz, /metrics or POST /sessions/revoke?subject=NAME\n",
        ),
    }
}

async fn revoke<H: AdminView>(handle: &H, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    if !req.headers().contains_key(REVOKE_HEADER) {
        return text(
            StatusCode::FORBIDDEN,
            "send the X-Sessiongate-Admin header (any value): `sessiongate revoke` does\n",
        );
    }
    if !host_is_an_address(req) {
        return text(
            StatusCode::FORBIDDEN,
            "the Host must be the listener's address or localhost\n",
        );
    }
    match handle.revoke_access() {
        RevokeAccess::Local => {}
        RevokeAccess::Token(token) if presents(req, &token) => {}
        RevokeAccess::Token(_) => {
            return text(
                StatusCode::UNAUTHORIZED,
                "send Authorization: Bearer <the content of admin.token_file>\n",
            )
        }
        RevokeAccess::Closed => {
            return text(
                StatusCode::FORBIDDEN,
                "revocation on an admin listener outside loopback needs admin.token_file\n",
            )
        }
    }
    let subject = form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "subject")
        .map(|(_, v)| v.into_owned());
    let Some(subject) = subject.filter(|s| !s.is_empty()) else {
        return text(StatusCode::BAD_REQUEST, "give the user as ?subject=NAME\n");
    };
    match handle.revoke_subject(&subject).await {
        Ok(n) => text(StatusCode::OK, &format!("ended {n} sessions\n")),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not all sessions could be ended: {e}\n"),
        ),
    }
}

/// The client side of the revocation endpoint (`sessiongate revoke`): the answer's text
/// on 200, an error with it otherwise.
pub async fn request_revoke(
    admin: std::net::SocketAddr,
    subject: &str,
    token: Option<&crate::config::Secret>,
) -> Result<String, crate::BoxError> {
    use http_body_util::BodyExt;
    let deadline = std::time::Duration::from_secs(60);
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(admin).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("subject", subject)
            .finish();
        let mut req = Request::post(format!("{REVOKE_PATH}?{query}"))
            .header(header::HOST, admin.to_string())
            .header(REVOKE_HEADER, "revoke");
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", token.0));
        }
        let req = req.body(full_body(""))?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        match status {
            StatusCode::OK => Ok(body),
            s => Err(format!("{s}: {}", body.trim()).into()),
        }
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| "no answer within 60 s")?
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
