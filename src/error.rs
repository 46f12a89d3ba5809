//! One error type for everything that can stop a request, and the one place that turns
//! it into a response.
//!
//! Each error knows its side: the client's (4xx), the upstream's (502/504), or ours
//! (500). The client gets a short generic page; the detail goes to the log, once, at the
//! edge (`service`).

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use crate::{full_body, Body, BoxError};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches this host and path")]
    NoRoute,
    #[error("request body exceeds the route's limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("method not allowed on this route: {0}")]
    MethodNotAllowed(&'static str),
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(&'static str),
    #[error("cannot connect to the upstream: {0}")]
    UpstreamConnect(#[source] BoxError),
    #[error("upstream request failed: {0}")]
    Upstream(#[source] BoxError),
    #[error("upstream sent no response within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("session store failed during {op} ({kind}): {source}", kind = .source.kind())]
    Store {
        op: crate::store::StoreOp,
        source: crate::store::StoreError,
    },
    /// The client created new sessions faster than `session.new_sessions_per_minute`.
    #[error("the client is creating new sessions too fast (session.new_sessions_per_minute)")]
    TooManyNewSessions { retry_after: std::time::Duration },
    #[error("another sign-in is in progress for this session")]
    LoginInProgress,
    #[error("the session changed while the sign-in was in flight")]
    SessionChanged,
    #[error("internal error: {0}")]
    Internal(String),
}

/// Who caused an error, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Store,
    Internal,
}

impl ProxyError {
    /// A short, stable reason for requests refused while being read (a metric label).
    pub fn rejection_reason(&self) -> Option<&'static str> {
        match self {
            ProxyError::BadRequest(r)
            | ProxyError::MethodNotAllowed(r)
            | ProxyError::NotImplemented(r)
            | ProxyError::UnsupportedMediaType(r) => Some(r),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProxyError::UpstreamConnect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Store { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::TooManyNewSessions { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::LoginInProgress | ProxyError::SessionChanged => StatusCode::CONFLICT,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A request refused a new session (a limit, not a fault): `full` (the store's
    /// bound) or `rate` (the client's creation limit).
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            ProxyError::Store {
                source: crate::store::StoreError::Full,
                ..
            } => Some("full"),
            ProxyError::TooManyNewSessions { .. } => Some("rate"),
            _ => None,
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::NoRoute
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::NotImplemented(_)
            | ProxyError::UnsupportedMediaType(_) => Side::Client,
            ProxyError::UpstreamConnect(_)
            | ProxyError::Upstream(_)
            | ProxyError::UpstreamTimeout(_) => Side::Upstream,
            ProxyError::Store { .. } => Side::Store,
            ProxyError::TooManyNewSessions { .. }
            | ProxyError::LoginInProgress
            | ProxyError::SessionChanged => Side::Client,
            ProxyError::Internal(_) => Side::Internal,
        }
    }

    /// What the visitor reads: generic, no internal detail.
    fn public_message(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "There is no application configured for this address.",
            ProxyError::BodyTooLarge { .. } => {
                "The request body is larger than this application accepts."
            }
            ProxyError::BadRequest(_) => "The request could not be understood.",
            ProxyError::MethodNotAllowed(_) => "This method is not allowed here.",
            ProxyError::NotImplemented(_) => {
                "The request uses a transfer coding this server does not implement."
            }
            ProxyError::UnsupportedMediaType(_) => {
                "The request body's media type or charset is not accepted here."
            }
            ProxyError::UpstreamConnect(_) | ProxyError::Upstream(_) => {
                "The application behind this proxy could not be reached or failed to answer."
            }
            ProxyError::UpstreamTimeout(_) => {
                "The application behind this proxy did not answer in time."
            }
            ProxyError::Store { .. } => {
                "Sessions are temporarily unavailable, so your request was not processed. Please try again in a moment."
            }
            ProxyError::TooManyNewSessions { .. } => {
                "Too many new sessions were started from your address. Please try again in a moment."
            }
            ProxyError::LoginInProgress => {
                "A sign-in for this session is still in progress. Please wait a moment and try again."
            }
            ProxyError::SessionChanged => "Your session changed during sign-in. Please sign in again.",
            ProxyError::Internal(_) => "Something went wrong in the proxy.",
        }
    }

    pub fn into_response(&self) -> Response<Body> {
        let mut resp = error_page(self.status(), self.public_message());
        let retry: Option<u64> = match self {
            ProxyError::Store { .. } => Some(5),
            // Whole seconds, rounded up: the bucket has a session again by then.
            ProxyError::TooManyNewSessions { retry_after } => {
                Some(retry_after.as_secs().saturating_add(1))
            }
            ProxyError::LoginInProgress => Some(1),
            _ => None,
        };
        if let Some(secs) = retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// A small HTML page the proxy answers with itself.
pub fn error_page(status: StatusCode, message: &str) -> Response<Body> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = status.as_u16();
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{code} {reason}</title></head>\
         <body><h1>{code} {reason}</h1><p>{message}</p><hr><p><small>sessiongate</small></p></body></html>\n"
    );
    let mut resp = Response::new(full_body(html));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
