//! sessiongate: a TLS-terminating reverse proxy that makes session fixation impossible
//! for web apps that cannot be changed.
//!
//! A request flows through the modules in this order (see `service` for the phase chart):
//! `app` (the composition root) hands `listener` (accept, connection cap, TLS handshake)
//! the `service` pipeline: `canon` (canonical host, target, framing) -> `router` ->
//! `session` + `names` (sessiongate's ID, the strict Cookie header) -> `inflight` +
//! `rotate` + `store` (the session) -> `forms` (bodies) -> `rules` (login detection) ->
//! `upstream` (forward to the app) -> `vault` (capture the app's cookies) -> `cookies`
//! (harden every Set-Cookie on the way back). `config` is parsed into final types once at
//! start-up; `error` maps every failure to one response.

pub mod activity;
pub mod admin;
pub mod app;
pub mod body;
pub mod canon;
pub mod config;
pub mod cookies;
pub mod error;
pub mod forms;
pub mod inflight;
pub mod limit;
pub mod listener;
pub mod logging;
pub mod names;
pub mod rotate;
pub mod router;
pub mod rules;
pub mod service;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tools;
pub mod upstream;
pub mod vault;

pub use app::{Server, ServerHandle};
pub use config::Config;

/// Boxed error used across body and client boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the proxy produces: bodies stream
/// through boxed, never buffered whole.
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

/// A complete (small) body, for pages the proxy writes itself.
pub fn full_body(bytes: impl Into<bytes::Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}
