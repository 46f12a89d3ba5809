//! Route selection: host + path -> `Arc<Route>`.
//!
//! The table is compiled once from the config. A route with a host beats a route without
//! one; among the candidates the longest matching path prefix wins. A prefix matches on
//! segment boundaries: `/app` matches `/app` and `/app/x` but not `/apple`, while `/app/`
//! matches only below `/app/`. Paths are the canonical ones (`canon`); prefixes compare
//! case-insensitively and hosts arrive lower-cased, without port and trailing dot.

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

/// Case-insensitive: an app that routes `/ADMIN` like `/admin` (Express, IIS) must not
/// reach a session route's handlers through a plain route.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let Some(head) = path.get(..prefix.len()) else {
        return false;
    };
    if !head.eq_ignore_ascii_case(prefix) {
        return false;
    }
    let rest = &path[prefix.len()..];
    rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/')
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
    fn prefixes_ignore_case() {
        assert!(prefix_matches("/app", "/APP/x"));
        assert!(prefix_matches("/app", "/App"));
        assert!(!prefix_matches("/app", "/ap"));
        assert!(!prefix_matches("/app", "/é"));
    }
}
