//! Observability: the Prometheus metrics every other module updates.
//!
//! One [`Metrics`] lives for the whole process, across config reloads, so that counters
//! never reset while the process runs. Metric values never carry a session ID, a cookie
//! value or a query string: labels are route names, status classes, operations and
//! outcomes only.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::StoreOp;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: StoreOp,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

fn latency() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

type Latency = Family<RouteLabel, Histogram, fn() -> Histogram>;
type OpLatency = Family<OpLabel, Histogram, fn() -> Histogram>;

/// Session lifecycle counters. Each is a handle on a registered metric.
#[derive(Debug)]
pub struct SessionCounters {
    pub created: Counter,
    pub login_rotated: Counter,
    /// Privilege rules that succeeded: the session got a new ID.
    pub privilege_rotated: Counter,
    pub periodic_rotated: Counter,
    pub logged_out: Counter,
    pub expired: Counter,
    /// Fixation signals: well-formed IDs that are rotated away, logged out, expired or
    /// unknown.
    pub stale_ids: Counter,
    /// Cookie values that failed validation, or several conflicting values.
    pub malformed_ids: Counter,
    pub vault_captured: Counter,
    pub login_success: Counter,
    pub login_failure: Counter,
    pub login_no_match: Counter,
    /// Login attempts that were neither a success nor a failure and got a new ID.
    pub undecided_rotated: Counter,
    /// Logins (or requests) refused because another login held the session.
    pub login_conflicts: Counter,
    /// Requests in flight on a session that a login cancelled after its drain wait.
    pub login_cancelled_requests: Counter,
    /// Sessions ended with the rest of their user's: a privilege change with
    /// `revoke_others`, or an operator's revocation by subject.
    pub subject_revoked: Counter,
}

impl SessionCounters {
    /// Counters not attached to any registry (unit tests).
    pub fn detached() -> SessionCounters {
        SessionCounters::register(&mut Registry::default())
    }

    fn register(r: &mut Registry) -> SessionCounters {
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let rotations = Family::<KindLabel, Counter>::default();
        r.register(
            "sessions_rotated",
            "Session IDs replaced, by kind (login, periodic)",
            rotations.clone(),
        );
        let logins = Family::<OutcomeLabel, Counter>::default();
        r.register(
            "login_rule_matches",
            "Login attempts matched by a rule, by outcome",
            logins.clone(),
        );
        let kind = |k| rotations.get_or_create(&KindLabel { kind: k }).clone();
        let outcome = |o| logins.get_or_create(&OutcomeLabel { outcome: o }).clone();
        SessionCounters {
            created: counter(r, "sessions_created", "Sessions created"),
            login_rotated: kind("login"),
            privilege_rotated: kind("privilege"),
            periodic_rotated: kind("periodic"),
            logged_out: counter(r, "sessions_logged_out", "Sessions ended by a logout"),
            expired: counter(r, "sessions_expired", "Sessions found expired (idle or absolute)"),
            stale_ids: counter(
                r,
                "stale_session_ids",
                "Well-formed session IDs presented after rotation, logout or expiry, or unknown (fixation signals)",
            ),
            malformed_ids: counter(r, "malformed_session_cookies", "Session cookie values that failed validation"),
            vault_captured: counter(r, "vault_cookies_captured", "App Set-Cookies captured into the vault"),
            login_success: outcome("success"),
            login_failure: outcome("failure"),
            login_no_match: outcome("undecided"),
            undecided_rotated: kind("undecided_login"),
            login_conflicts: counter(r, "login_conflicts", "Requests refused because a login held their session"),
            login_cancelled_requests: counter(
                r,
                "login_cancelled_requests",
                "Requests still in flight on a session when its login's drain wait ended, cancelled",
            ),
            subject_revoked: counter(
                r,
                "sessions_revoked_by_subject",
                "Sessions ended with the rest of their user's (privilege change with revoke_others, or an operator's revocation)",
            ),
        }
    }

    pub fn get(c: &Counter) -> u64 {
        c.get()
    }
}

/// At most one log line per second for an event that can happen on every request.
#[derive(Debug, Default)]
pub struct LogThrottle {
    second: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// `Some(lines suppressed since the last one)` when a line may be written now.
    pub fn allow(&self, now_ms: u64) -> Option<u64> {
        let second = now_ms / 1000;
        let last = self.second.load(Ordering::Relaxed);
        if last != second
            && self
                .second
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteReason {
    pub route: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteDecision {
    pub route: String,
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    /// Requests refused while being read (400, 405, 501), by reason.
    pub rejected: Family<ReasonLabel, Counter>,
    /// Parts of requests removed before the app saw them, by kind.
    pub removed: Family<KindLabel, Counter>,
    pub upstream_seconds: Latency,
    pub active_connections: Gauge,
    /// Connections accepted with fewer than a tenth of `max_connections` free, which get
    /// short handshake and head deadlines (`listener::PRESSED_DEADLINE`).
    pub connections_pressed: Counter,
    /// Tasks alive on the runtime, read when metrics are rendered.
    pub tokio_tasks: Gauge,
    pub tls_handshake_failures: Counter,
    pub store_seconds: OpLatency,
    /// `store_seconds`' handle for each operation (indexed by `StoreOp::index`), looked
    /// up once: a store call is on every session request's path.
    store_latency: [Histogram; StoreOp::ALL.len()],
    pub store_errors: Family<OpLabel, Counter>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// Anonymous sessions evicted because the store reached `store.max_sessions`.
    pub sessions_evicted: Counter,
    /// Requests refused a session, by reason (`full`: the bound; `rate`: the client's
    /// creation limit) and route.
    pub sessions_refused: Family<RouteReason, Counter>,
    pub refusal_log: LogThrottle,
    /// Requests refused for the client's own fault.
    pub client_error_log: LogThrottle,
    pub reloads: Family<OutcomeLabel, Counter>,
    /// Routes in observe mode: what enforcing would have done, by decision.
    pub observed: Family<RouteDecision, Counter>,
    pub sessions: SessionCounters,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers a metric and hands back the handle the code updates.
fn reg<M>(r: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    r.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("sessiongate");
        let store_seconds: OpLatency = reg(
            &mut r,
            "store_operation_duration_seconds",
            "Session store call latency, by operation",
            Family::new_with_constructor(latency),
        );
        let store_latency =
            StoreOp::ALL.map(|op| store_seconds.get_or_create(&OpLabel { op }).clone());
        Metrics {
            requests: reg(&mut r, "requests", "Requests answered, by route and status class", Family::default()),
            rejected: reg(
                &mut r,
                "rejected_requests",
                "Requests refused while being read (ambiguous target, Host, framing, method), by reason",
                Family::default(),
            ),
            removed: reg(
                &mut r,
                "removed_request_parts",
                "Cookies, parameters, parts and headers removed from requests before the app saw them, by kind",
                Family::default(),
            ),
            upstream_seconds: reg(
                &mut r,
                "upstream_duration_seconds",
                "Time from sending a request to the app until its response head, by route",
                Family::new_with_constructor(latency),
            ),
            active_connections: reg(&mut r, "active_connections", "Client connections open now", Gauge::default()),
            connections_pressed: reg(&mut r, "connections_pressed", "Connections accepted with under a tenth of max_connections free (short handshake and head deadlines)", Counter::default()),
            tokio_tasks: reg(&mut r, "tokio_tasks", "Tasks alive on the async runtime (connections, relays, the sweeper)", Gauge::default()),
            tls_handshake_failures: reg(
                &mut r,
                "tls_handshake_failures",
                "TLS handshakes that failed or timed out",
                Counter::default(),
            ),
            store_seconds,
            store_latency,
            store_errors: reg(
                &mut r,
                "store_errors",
                "Session store calls that failed or timed out, by operation",
                Family::default(),
            ),
            cache_hits: reg(&mut r, "cache_hits", "Session lookups answered by this replica's cache", Counter::default()),
            cache_misses: reg(&mut r, "cache_misses", "Session lookups that went to the store", Counter::default()),
            sessions_evicted: reg(
                &mut r,
                "sessions_evicted",
                "Anonymous sessions evicted because the store reached store.max_sessions",
                Counter::default(),
            ),
            sessions_refused: reg(
                &mut r,
                "sessions_refused",
                "Requests that would have created a session, refused (full: store.max_sessions; rate: the per-client creation limit), by route",
                Family::default(),
            ),
            refusal_log: LogThrottle::default(),
            client_error_log: LogThrottle::default(),
            reloads: reg(&mut r, "config_reloads", "Config reloads, by outcome (success, failure)", Family::default()),
            observed: reg(
                &mut r,
                "observe_decisions",
                "Routes in observe mode: decisions enforcing would have taken, by route and decision",
                Family::default(),
            ),
            sessions: SessionCounters::register(&mut r),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        // Read at scrape time: a task that never ends (a leak) shows as a rising line.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let tasks = i64::try_from(rt.metrics().num_alive_tasks()).unwrap_or(i64::MAX);
            self.tokio_tasks.set(tasks);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The latency histogram of a store operation.
    pub fn store_latency(&self, op: StoreOp) -> &Histogram {
        &self.store_latency[op.index()]
    }

    /// Counts `n` removed request parts of a kind (nothing when `n` is 0).
    pub fn count_removed(&self, kind: &'static str, n: usize) {
        if n > 0 {
            self.removed
                .get_or_create(&KindLabel { kind })
                .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
        }
    }

    pub fn count_refused(&self, route: &str, reason: &'static str) {
        self.sessions_refused
            .get_or_create(&RouteReason {
                route: route.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn count_request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.to_owned(),
                status_class: STATUS_CLASSES[status_class(status)],
            })
            .inc();
    }

    /// The handles of a route's per-request metrics, looked up once: a label lookup per
    /// request hashes and clones the route name (and takes the family's lock).
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            requests: STATUS_CLASSES.map(|status_class| {
                self.requests
                    .get_or_create(&RouteStatus {
                        route: route.to_owned(),
                        status_class,
                    })
                    .clone()
            }),
            upstream_seconds: self
                .upstream_seconds
                .get_or_create(&RouteLabel {
                    route: route.to_owned(),
                })
                .clone(),
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// A route's per-request metrics ([`Metrics::route`]).
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    requests: [Counter; 5],
    pub upstream_seconds: Histogram,
}

impl RouteMetrics {
    pub fn count_request(&self, status: u16) {
        self.requests[status_class(status)].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_store_operation_observes_its_own_labelled_histogram() {
        let m = Metrics::new();
        for (i, op) in StoreOp::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i, "StoreOp::ALL is in declaration order");
            for _ in 0..=i {
                m.store_latency(op).observe(0.001);
            }
        }
        let text = m.render();
        for (i, op) in StoreOp::ALL.into_iter().enumerate() {
            let line = format!(
                "sessiongate_store_operation_duration_seconds_count{{op=\"{}\"}} {}",
                op.as_str(),
                i + 1
            );
            assert!(text.contains(&line), "missing {line} in:\n{text}");
        }
    }
}
