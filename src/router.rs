//! Route selection: host + path -> `Arc<Route>`.
//!
//! The table is compiled once from the config. A route with a host beats a route without
//! one; among the candidates the longest matching path prefix wins. A prefix matches on
//! segment boundaries: `/app` matches `/app` and `/app/x` but not `/apple`, while `/app/`
//! matches only below `/app/`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Route;

#[derive(Debug, Default)]
pub struct Router {
    /// Per lower-cased host, its routes sorted by descending prefix length.
    by_host: HashMap<String, Vec<Arc<Route>>>,
    /// Host-less routes, sorted by descending prefix length.
    any_host: Vec<Arc<Route>>,
}

impl Router {
    pub fn new(routes: &[Arc<Route>]) -> Router {
        let mut r = Router::default();
        for route in routes {
            match &route.host {
                Some(h) => r.by_host.entry(h.clone()).or_default().push(route.clone()),
                None => r.any_host.push(route.clone()),
            }
        }
        let by_len = |a: &Arc<Route>, b: &Arc<Route>| b.path_prefix.len().cmp(&a.path_prefix.len());
        r.any_host.sort_by(by_len);
        for list in r.by_host.values_mut() {
            list.sort_by(by_len);
        }
        r
    }

    /// `host` is the request's host without port; it is compared case-insensitively.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        let host_routes = host.and_then(|h| {
            if h.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_host.get(&h.to_ascii_lowercase())
            } else {
                self.by_host.get(h)
            }
        });
        host_routes
            .and_then(|list| first_match(list, path))
            .or_else(|| first_match(&self.any_host, path))
    }
}

fn first_match<'a>(list: &'a [Arc<Route>], path: &str) -> Option<&'a Arc<Route>> {
    list.iter().find(|r| prefix_matches(&r.path_prefix, path))
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// The request's host without port: the URI authority (HTTP/2, absolute-form) or the
/// `Host` header.
pub fn request_host<B>(req: &http::Request<B>) -> Option<&str> {
    let raw = match req.uri().host() {
        Some(h) => h,
        None => req.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_segment_boundaries() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/app", "/app"));
        assert!(prefix_matches("/app", "/app/x"));
        assert!(!prefix_matches("/app", "/apple"));
        assert!(prefix_matches("/app/", "/app/x"));
        assert!(!prefix_matches("/app/", "/app"));
    }

    #[test]
    fn host_port_is_stripped() {
        assert_eq!(strip_port("example.com:8443"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8443"), "::1");
    }
}
