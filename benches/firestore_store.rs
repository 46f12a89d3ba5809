//! What the Firestore session store costs, measured against the real Firestore emulator
//! with real proxies in front of a tiny legacy app:
//!
//! 1. store operations per 1000 proxied requests on a session whose cache entry is warm;
//! 2. what one login costs in store operations (first visit, claim, rotation, ...);
//! 3. latency of each store operation on the Firestore backend (the login rotation in
//!    particular), and of a whole login through the proxy;
//! 4. how long a logout on replica A takes to be honoured by replica B.
//!
//! Store calls are counted by a decorator *under* each replica's cache (`CachedStore`
//! -> counter -> `FirestoreStore`), and what reaches Firestore by a tap on the wire
//! between each replica and the emulator (`tests/support/tap.rs`, shared with the test
//! suite like the emulator and PKI harness): gRPC calls by method, document reads (the
//! read RPCs) and document writes (counted inside every commit it forwards). The figures
//! are what the emulator received, not what the code expects to send.
//!
//! `cargo bench --bench firestore_store` runs the full measurement; without `--bench`
//! (`cargo test --all-targets`) it does a short run that still checks every invariant.
//! Uses `FIRESTORE_EMULATOR_HOST` when set, else starts the emulator itself (jar at
//! `$SESSIONGATE_FIRESTORE_EMULATOR_JAR` or the Debian package's path). The table is
//! printed and written to `target/firestore_bench.md` (short runs:
//! `target/firestore_bench.short.md`).
//!
//! Last result (2-core EPYC VM, emulator on the same machine, 2026-12-02), as the
//! emulator received it: 0 reads and 0 writes per 1000 back-to-back requests, one read
//! per request when they are more than cache_ttl apart; a login = 2 BeginTransaction +
//! 2 GetDocument + 2 Commit writing 3 documents (claim 1, rotation 2), plus one read if
//! the cache went cold, after a CreateDocument at the first visit; 0 transactions per
//! 1000 requests when the app re-sends its cookie on each; rotate p50 3.5 ms; a login
//! through the proxy p50 1018 ms, of which 1000 ms is the settle wait; revocation on the
//! other replica p50 466 ms, max 959 ms over 20 trials (cache_ttl 1s); 0.00 writes per
//! one-request visitor with defer_anonymous_writes, 1.00 without.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use sessiongate::config::StoreConfig;
use sessiongate::session::SessionKey;
use sessiongate::store::bound::Bound;
use sessiongate::store::cache::CachedStore;
use sessiongate::store::firestore::FirestoreStore;
use sessiongate::store::{
    Claim, LoginClaim, Lookup, OldKey, RevokeReason, RotateOutcome, Rotation, SessionRecord,
    SessionStore, StoreError, StoreOp,
};
use sessiongate::vault::{VaultChange, VaultCookie};
use sessiongate::{Config, Server};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

#[path = "../tests/support/mod.rs"]
mod support;

use support::{Tap, TapCounts};

const PROJECT: &str = "sessiongate-bench";
const SG: &str = "__Host-sg";

struct Plan {
    full: bool,
    /// Proxied requests per warm-cache run.
    requests: usize,
    logins: usize,
    revocations: usize,
    /// Requests in the paced run (1.5 x cache_ttl apart).
    paced: usize,
    /// Samples per store operation in the backend latency run.
    op_samples: usize,
    /// Anonymous visitors per group in the deferred-writes run.
    visitors: usize,
}

// ---------------------------------------------------------------- the emulator

/// The emulator this run talks to: `FIRESTORE_EMULATOR_HOST`, or one of its own (the
/// test suite's harness), killed when dropped.
struct Emulator {
    host: String,
    own: Option<support::Emulator>,
}

impl Emulator {
    /// Must run before any thread starts: it sets `FIRESTORE_EMULATOR_HOST`.
    fn ensure() -> Emulator {
        if let Some(host) = std::env::var("FIRESTORE_EMULATOR_HOST")
            .ok()
            .filter(|h| !h.is_empty())
        {
            return Emulator { host, own: None };
        }
        let own = support::Emulator::start();
        std::env::set_var("FIRESTORE_EMULATOR_HOST", &own.host);
        Emulator {
            host: own.host.clone(),
            own: Some(own),
        }
    }

    fn started_here(&self) -> bool {
        self.own.is_some()
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

// ---------------------------------------------------------------- counting store

/// Counters are indexed by the operation's position in `StoreOp::ALL`.
const N_OPS: usize = StoreOp::ALL.len();
const OPS: [StoreOp; N_OPS] = StoreOp::ALL;
const fn ix(op: StoreOp) -> usize {
    op as usize
}
const LOAD: usize = ix(StoreOp::Load);
const CREATE: usize = ix(StoreOp::Create);
const TOUCH: usize = ix(StoreOp::Touch);
const MERGE: usize = ix(StoreOp::MergeVault);
const CLAIM: usize = ix(StoreOp::ClaimLogin);
const RELEASE: usize = ix(StoreOp::ReleaseLogin);
const ROTATE: usize = ix(StoreOp::Rotate);
const REVOKE: usize = ix(StoreOp::Revoke);
const SWEEP: usize = ix(StoreOp::Sweep);
const SESSIONS_OF: usize = ix(StoreOp::SessionsOf);

/// Counts what reaches the wrapped store: calls, time spent and errors per operation,
/// and, from the replica's tap, what really went over the wire to Firestore.
struct Counting {
    inner: Arc<dyn SessionStore>,
    tap: Tap,
    calls: [AtomicU64; N_OPS],
    nanos: [AtomicU64; N_OPS],
    errors: [AtomicU64; N_OPS],
}

#[derive(Debug, Clone, Default)]
struct Snap {
    calls: [u64; N_OPS],
    nanos: [u64; N_OPS],
    errors: [u64; N_OPS],
    /// RPCs and document writes that reached the emulator.
    wire: TapCounts,
}

impl Snap {
    fn minus(&self, before: &Snap) -> Snap {
        let mut d = Snap::default();
        for i in 0..OPS.len() {
            d.calls[i] = self.calls[i] - before.calls[i];
            d.nanos[i] = self.nanos[i] - before.nanos[i];
            d.errors[i] = self.errors[i] - before.errors[i];
        }
        d.wire = self.wire.since(&before.wire);
        d
    }

    fn add(&mut self, other: &Snap) {
        for i in 0..OPS.len() {
            self.calls[i] += other.calls[i];
            self.nanos[i] += other.nanos[i];
            self.errors[i] += other.errors[i];
        }
        for (m, n) in &other.wire.calls {
            *self.wire.calls.entry(m.clone()).or_default() += n;
        }
        self.wire.writes += other.wire.writes;
    }

    /// Document reads that reached Firestore (read RPCs, inside transactions or not).
    fn reads(&self) -> u64 {
        self.wire.reads()
    }

    /// Documents written, counted in the commits and write RPCs Firestore received.
    fn writes(&self) -> u64 {
        self.wire.writes
    }

    fn transactions(&self) -> u64 {
        self.wire.calls("BeginTransaction")
    }

    fn errors(&self) -> u64 {
        self.errors.iter().sum()
    }

    fn mean_ms(&self, op: usize) -> f64 {
        if self.calls[op] == 0 {
            return 0.0;
        }
        self.nanos[op] as f64 / self.calls[op] as f64 / 1e6
    }

    /// `op xN` for every operation that happened, then what Firestore received.
    fn describe(&self) -> String {
        let ops: Vec<String> = (0..OPS.len())
            .filter(|&i| self.calls[i] > 0)
            .map(|i| format!("{} x{}", OPS[i].as_str(), self.calls[i]))
            .collect();
        let wire: Vec<String> = self
            .wire
            .calls
            .iter()
            .map(|(m, n)| format!("{m} x{n}"))
            .collect();
        format!(
            "{}; on the wire: {} ({} document writes)",
            if ops.is_empty() {
                "no store calls".into()
            } else {
                ops.join(", ")
            },
            if wire.is_empty() {
                "nothing".into()
            } else {
                wire.join(", ")
            },
            self.wire.writes
        )
    }
}

impl Counting {
    fn new(inner: Arc<dyn SessionStore>, tap: Tap) -> Counting {
        Counting {
            inner,
            tap,
            calls: Default::default(),
            nanos: Default::default(),
            errors: Default::default(),
        }
    }

    fn snap(&self) -> Snap {
        let mut s = Snap::default();
        for i in 0..OPS.len() {
            s.calls[i] = self.calls[i].load(Ordering::SeqCst);
            s.nanos[i] = self.nanos[i].load(Ordering::SeqCst);
            s.errors[i] = self.errors[i].load(Ordering::SeqCst);
        }
        s.wire = self.tap.counts();
        s
    }

    async fn count<T>(
        &self,
        op: usize,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = fut.await;
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.calls[op].fetch_add(1, Ordering::SeqCst);
        self.nanos[op].fetch_add(took, Ordering::SeqCst);
        if r.is_err() {
            self.errors[op].fetch_add(1, Ordering::SeqCst);
        }
        r
    }
}

#[async_trait]
impl SessionStore for Counting {
    async fn load(&self, key: &SessionKey) -> Result<Lookup, StoreError> {
        self.count(LOAD, self.inner.load(key)).await
    }

    async fn load_stale(&self, key: &SessionKey) -> Option<Lookup> {
        self.inner.load_stale(key).await
    }

    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        self.count(CREATE, self.inner.create(key, record)).await
    }

    async fn merge_vault(
        &self,
        key: &SessionKey,
        changes: &[VaultChange],
        now: u64,
        expires_at: u64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.count(MERGE, self.inner.merge_vault(key, changes, now, expires_at))
            .await
    }

    async fn touch(&self, key: &SessionKey, now: u64, expires_at: u64) -> Result<(), StoreError> {
        self.count(TOUCH, self.inner.touch(key, now, expires_at))
            .await
    }

    async fn claim_login(
        &self,
        key: &SessionKey,
        claim: LoginClaim,
        now: u64,
    ) -> Result<Claim, StoreError> {
        self.count(CLAIM, self.inner.claim_login(key, claim, now))
            .await
    }

    async fn release_login(&self, key: &SessionKey, owner: u64) -> Result<(), StoreError> {
        self.count(RELEASE, self.inner.release_login(key, owner))
            .await
    }

    async fn rotate(
        &self,
        old: &SessionKey,
        new: &SessionKey,
        rotation: &Rotation,
    ) -> Result<RotateOutcome, StoreError> {
        self.count(ROTATE, self.inner.rotate(old, new, rotation))
            .await
    }

    async fn revoke(
        &self,
        key: &SessionKey,
        reason: RevokeReason,
        keep_until: u64,
    ) -> Result<bool, StoreError> {
        self.count(REVOKE, self.inner.revoke(key, reason, keep_until))
            .await
    }

    async fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        self.count(SWEEP, self.inner.sweep(now)).await
    }

    async fn sessions_of(&self, subject: &str) -> Result<Vec<SessionKey>, StoreError> {
        self.count(SESSIONS_OF, self.inner.sessions_of(subject))
            .await
    }
}

// ---------------------------------------------------------------- replicas

struct Replica {
    addr: SocketAddr,
    counts: Arc<Counting>,
    cache_ttl: Duration,
    defer_anonymous_writes: bool,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn replica_config(
    leaf: &support::LeafFiles,
    app: SocketAddr,
    collection: &str,
    cache_ttl: Option<&str>,
    defer_anonymous_writes: bool,
) -> String {
    let mut ttl = cache_ttl.map_or(String::new(), |t| format!("cache_ttl = \"{t}\"\n"));
    if defer_anonymous_writes {
        ttl.push_str("defer_anonymous_writes = true\n");
    }
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
worker_threads = 2
shutdown_grace = "1s"

[[tls.certificates]]
cert = "{cert}"
key = "{key}"

[store]
kind = "firestore"
project_id = "{PROJECT}"
collection = "{collection}"
{ttl}
# The bench's visitors all come from 127.0.0.1.
[session]
new_sessions_per_minute = 0

[[routes]]
upstream = "http://{app}"
response_timeout = "5s"
[routes.session]
vault = ["SID"]
[[routes.session.login]]
path = "/login"
success = {{ status = [303], header = {{ name = "location", regex = "^/home$" }} }}
failure = {{ body_contains = "bad credentials" }}
subject = {{ form_field = "username" }}
[[routes.session.logout]]
path = "/logout"
methods = ["POST"]
"#,
        cert = leaf.cert.display(),
        key = leaf.key.display(),
    )
}

/// A proxy built like production (`store::open`: Firestore behind this replica's cache),
/// with the counter between the cache and Firestore.
async fn start_replica(text: &str) -> Replica {
    let config = Config::from_toml(text, Path::new("."))
        .unwrap_or_else(|e| panic!("bench config rejected: {e}\n{text}"));
    let StoreConfig::Firestore {
        project_id,
        database_id,
        collection,
        cache_ttl,
        cache_stale_for,
        cache_max_entries,
        defer_anonymous_writes,
    } = config.store.clone()
    else {
        panic!("the bench config must use the Firestore store");
    };
    // Each replica talks to Firestore through a tap of its own, which counts what
    // reaches the emulator. The client library reads the address when it connects.
    let emulator = std::env::var("FIRESTORE_EMULATOR_HOST").expect("the emulator's address");
    let tap = Tap::start(&emulator).await;
    std::env::set_var("FIRESTORE_EMULATOR_HOST", &tap.host);
    let remote = FirestoreStore::connect(&project_id, &database_id, &collection).await;
    std::env::set_var("FIRESTORE_EMULATOR_HOST", &emulator);
    let remote = remote.unwrap_or_else(|e| panic!("connecting to Firestore: {e}"));
    let counts = Arc::new(Counting::new(Arc::new(remote), tap));
    let cache = CachedStore::new(
        counts.clone(),
        cache_ttl,
        cache_stale_for,
        cache_max_entries,
    );
    let defer = defer_anonymous_writes.then(|| Bound::new(cache_max_entries, Default::default()));
    let store = sessiongate::store::deferring(std::sync::Arc::new(cache), defer);
    let server = Server::bind_with_store(config, Some(store))
        .await
        .unwrap_or_else(|e| panic!("starting the proxy: {e}"));
    let addr = server.tls_addr().expect("the TLS listener");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Replica {
        addr,
        counts,
        cache_ttl,
        defer_anonymous_writes,
        stop: Some(stop),
    }
}

// ---------------------------------------------------------------- client

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
    /// `Some(Some(id))`: sessiongate set its cookie; `Some(None)`: it expired it.
    sg: Option<Option<String>>,
    /// The app session (`SID`) the request reached the app with, if any.
    app_sid: Option<String>,
}

/// One keep-alive HTTP/1.1 connection over TLS, holding sessiongate's cookie like a
/// browser.
struct Visitor {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    send: Option<Sender>,
    sg: Option<String>,
}

impl Visitor {
    fn new(replica: &Replica, tls: &Arc<rustls::ClientConfig>) -> Visitor {
        Visitor {
            addr: replica.addr,
            tls: tls.clone(),
            send: None,
            sg: None,
        }
    }

    fn holding(replica: &Replica, tls: &Arc<rustls::ClientConfig>, id: &str) -> Visitor {
        let mut v = Visitor::new(replica, tls);
        v.sg = Some(id.to_owned());
        v
    }

    async fn connect(&self) -> Sender {
        let tcp = TcpStream::connect(self.addr).await.expect("connecting");
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake with the proxy");
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        send
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    async fn post(&mut self, path: &str, form: &str) -> Reply {
        self.send(Method::POST, path, Some(form)).await
    }

    async fn send(&mut self, method: Method, path: &str, form: Option<&str>) -> Reply {
        let what = format!("{method} {path} via {}", self.addr);
        tokio::time::timeout(Duration::from_secs(20), self.send_inner(method, path, form))
            .await
            .unwrap_or_else(|_| panic!("no answer to {what} within 20 s"))
    }

    async fn send_inner(&mut self, method: Method, path: &str, form: Option<&str>) -> Reply {
        // Reconnect once if the proxy closed the idle connection before we sent.
        let mut send = match self.send.take() {
            Some(mut s) => match s.ready().await {
                Ok(()) => Some(s),
                Err(_) => None,
            },
            None => None,
        };
        if send.is_none() {
            let mut s = self.connect().await;
            s.ready().await.expect("a fresh connection is ready");
            send = Some(s);
        }
        let mut send = send.expect("connected");
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(id) = &self.sg {
            req = req.header("cookie", format!("{SG}={id}"));
        }
        let body = match form {
            Some(f) => {
                req = req.header("content-type", "application/x-www-form-urlencoded");
                Bytes::from(f.to_owned())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).expect("a valid request");
        let resp = send.send_request(req).await.expect("a response");
        self.send = Some(send);
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("the body").to_bytes();
        let sg = parts
            .headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|line| line.strip_prefix(&format!("{SG}=")).map(str::to_owned))
            .map(|line| {
                let value = line.split(';').next().unwrap_or_default().to_owned();
                (!line.contains("Max-Age=0;") && !value.is_empty()).then_some(value)
            });
        if let Some(change) = &sg {
            self.sg = change.clone();
        }
        let app_sid = parts
            .headers
            .get("x-app-sid")
            .and_then(|v| v.to_str().ok())
            .filter(|v| *v != "-")
            .map(str::to_owned);
        Reply {
            status: parts.status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
            sg,
            app_sid,
        }
    }
}

// ---------------------------------------------------------------- statistics

/// Nearest-rank percentile.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort_unstable();
    v
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn now_ms() -> u64 {
    sessiongate::store::now_ms()
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{tag}_{nanos}_{}", std::process::id())
}

fn key(run: u64, i: usize, which: u8) -> SessionKey {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&run.to_le_bytes());
    b[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    b[16] = which;
    SessionKey(b)
}

// ---------------------------------------------------------------- measurements

struct OpLatency {
    name: &'static str,
    samples: Vec<Duration>,
}

/// Each store operation directly on the Firestore backend (no cache), one session per
/// sample: create, load, touch, merge_vault, claim_login, rotate (login), revoke; after
/// one untimed load that opens the connection.
async fn backend_latency(store: &FirestoreStore, samples: usize) -> Vec<OpLatency> {
    let names = [
        "create",
        "load",
        "touch",
        "merge_vault",
        "claim_login",
        "rotate (login)",
        "revoke",
    ];
    let mut out: Vec<OpLatency> = names
        .iter()
        .map(|&name| OpLatency {
            name,
            samples: Vec::with_capacity(samples),
        })
        .collect();
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let cookie = |v: &str| VaultCookie {
        name: "SID".into(),
        value: v.into(),
        path: "/".into(),
        expires_at: None,
    };
    // The first call opens the gRPC channel (hundreds of ms): not a per-operation cost.
    store
        .load(&key(run, usize::MAX, 0))
        .await
        .expect("a first load");
    for i in 0..samples {
        let (old, new) = (key(run, i, 1), key(run, i, 2));
        let now = now_ms();
        let expires = now + 30 * 60 * 1000;
        let rec = SessionRecord::new_anonymous(now, expires, vec![cookie("app1")]);
        let mut t = Instant::now();
        let mut lap = |slot: usize, out: &mut Vec<OpLatency>| {
            out[slot].samples.push(t.elapsed());
            t = Instant::now();
        };
        store.create(&old, &rec).await.expect("create");
        lap(0, &mut out);
        let l = store.load(&old).await.expect("load");
        lap(1, &mut out);
        assert!(matches!(l, Lookup::Live(_)), "a created session loads live");
        store.touch(&old, now + 1, expires).await.expect("touch");
        lap(2, &mut out);
        let merged = store
            .merge_vault(&old, &[VaultChange::Set(cookie("app2"))], now + 2, expires)
            .await
            .expect("merge_vault");
        lap(3, &mut out);
        assert!(merged.is_some(), "merge_vault on a live session");
        let claim = store
            .claim_login(
                &old,
                LoginClaim {
                    owner: 1,
                    until: now + 60_000,
                },
                now + 3,
            )
            .await
            .expect("claim_login");
        lap(4, &mut out);
        assert_eq!(claim, Claim::Claimed);
        let rotation = Rotation {
            changes: Vec::new(),
            authenticate: Some(Some(format!("user{i}"))),
            now: now + 4,
            expires_at: expires,
            old_becomes: OldKey::Revoked {
                reason: RevokeReason::LoginRotated,
                keep_until: expires,
            },
        };
        let rotated = store.rotate(&old, &new, &rotation).await.expect("rotate");
        lap(5, &mut out);
        assert!(
            matches!(rotated, RotateOutcome::Rotated(_)),
            "rotation of a live session"
        );
        let revoked = store
            .revoke(&new, RevokeReason::LoggedOut, expires)
            .await
            .expect("revoke");
        lap(6, &mut out);
        assert!(revoked, "revoking the live successor");
    }
    for o in &mut out {
        o.samples.sort_unstable();
    }
    out
}

struct LoginSample {
    cold: bool,
    latency: Duration,
    first_visit: Snap,
    login: Snap,
    after: Snap,
    other_replica: Snap,
}

/// A visitor's first request (the app sets its session cookie), optionally a pause
/// longer than the cache TTL (a person typing a password), the login, and the first
/// request after it; each step's store operations on `a` counted separately.
async fn login_once(
    a: &Replica,
    others: &[&Replica],
    tls: &Arc<rustls::ClientConfig>,
    user: &str,
    cold: bool,
) -> (LoginSample, Visitor) {
    let others_before: Vec<Snap> = others.iter().map(|r| r.counts.snap()).collect();
    let mut v = Visitor::new(a, tls);
    let s0 = a.counts.snap();
    let r = v.get("/whoami").await;
    assert_eq!((r.status, r.body.as_str()), (200, "anonymous"), "{r:?}");
    let anonymous = v.sg.clone().expect("the first visit gets a session cookie");
    let first_visit = a.counts.snap().minus(&s0);
    if cold {
        tokio::time::sleep(a.cache_ttl + Duration::from_millis(100)).await;
    }
    let s1 = a.counts.snap();
    let t = Instant::now();
    let r = v
        .post("/login", &format!("username={user}&password=pw-{user}"))
        .await;
    let latency = t.elapsed();
    let login = a.counts.snap().minus(&s1);
    assert_eq!(r.status, 303, "login: {r:?}");
    let signed_in = v.sg.clone().expect("the login sets a session cookie");
    assert_ne!(signed_in, anonymous, "the login must mint a new ID");
    let s2 = a.counts.snap();
    let r = v.get("/whoami").await;
    assert_eq!((r.status, r.body.as_str()), (200, user), "{r:?}");
    let after = a.counts.snap().minus(&s2);
    let mut other_replica = Snap::default();
    for (r, before) in others.iter().zip(&others_before) {
        other_replica.add(&r.counts.snap().minus(before));
    }
    (
        LoginSample {
            cold,
            latency,
            first_visit,
            login,
            after,
            other_replica,
        },
        v,
    )
}

struct WarmRun {
    ttl: Duration,
    /// Whether the app re-sent its session cookie on every response.
    rolling: bool,
    /// Pause between requests.
    gap: Duration,
    requests: usize,
    elapsed: Duration,
    ops: Snap,
    latencies: Vec<Duration>,
}

/// `n` requests on one keep-alive connection for a session already in the replica's
/// cache (one request before the count loads it), `gap` apart; with `rolling`, to a page
/// on which the app re-sends its session cookie.
async fn warm_run(
    replica: &Replica,
    tls: &Arc<rustls::ClientConfig>,
    (id, user): (&str, &str),
    n: usize,
    gap: Duration,
    rolling: bool,
) -> WarmRun {
    let page = if rolling {
        "/whoami-rolling"
    } else {
        "/whoami"
    };
    let mut v = Visitor::holding(replica, tls, id);
    let r = v.get(page).await;
    assert_eq!(r.body, user, "warm-up: {r:?}");
    let before = replica.counts.snap();
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        let t = Instant::now();
        let r = v.get(page).await;
        latencies.push(t.elapsed());
        assert_eq!((r.status, r.body.as_str()), (200, user), "{r:?}");
        assert!(r.sg.is_none(), "no cookie change on an ordinary request");
    }
    let elapsed = started.elapsed();
    WarmRun {
        ttl: replica.cache_ttl,
        rolling,
        gap,
        requests: n,
        elapsed,
        ops: replica.counts.snap().minus(&before),
        latencies: sorted(latencies),
    }
}

struct AnonymousRun {
    deferred: bool,
    visitors: usize,
    /// Visitors who make one request and never come back (crawlers, floods).
    once: Snap,
    /// The same number of visitors who come back once (a second page).
    returning: Snap,
}

/// `n` cookie-less visitors who never return, then `n` who return once; what each group
/// cost in the store.
async fn anonymous_run(
    replica: &Replica,
    tls: &Arc<rustls::ClientConfig>,
    n: usize,
) -> AnonymousRun {
    let before = replica.counts.snap();
    for _ in 0..n {
        let mut v = Visitor::new(replica, tls);
        let r = v.get("/whoami").await;
        assert_eq!((r.status, r.body.as_str()), (200, "anonymous"), "{r:?}");
        assert!(v.sg.is_some(), "the first visit gets a session cookie");
    }
    let once = replica.counts.snap().minus(&before);
    let before = replica.counts.snap();
    for _ in 0..n {
        let mut v = Visitor::new(replica, tls);
        v.get("/whoami").await;
        let first = v.sg.clone().expect("the first visit gets a session cookie");
        let r = v.get("/whoami").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.sg.is_none(), "the returning visitor keeps its ID: {r:?}");
        assert!(
            r.app_sid.is_some(),
            "the app's cookie was vaulted and comes back with the visitor: {r:?}"
        );
        assert_eq!(v.sg.as_deref(), Some(first.as_str()));
    }
    AnonymousRun {
        deferred: replica.defer_anonymous_writes,
        visitors: n,
        once,
        returning: replica.counts.snap().minus(&before),
    }
}

struct Revocation {
    delay: Duration,
    logout: Snap,
    b_reads_per_s: f64,
}

/// Log in on A, keep the ID hot on B (a poller every 10 ms), log out on A after a
/// pause spreading the logout's phase over B's cache period, and time until B refuses.
async fn revocation_trial(
    a: &Replica,
    b: &Replica,
    tls: &Arc<rustls::ClientConfig>,
    trial: usize,
    trials: usize,
) -> Revocation {
    let user = format!("rv{trial}");
    let (_, mut v) = login_once(a, &[b], tls, &user, false).await;
    let id = v.sg.clone().expect("signed in");
    let mut thief = Visitor::holding(b, tls, &id);
    let r = thief.get("/whoami").await;
    assert_eq!(
        r.body, user,
        "replica B serves the session A created: {r:?}"
    );
    let vaulted = r
        .app_sid
        .clone()
        .expect("B sends the session's SID to the app");
    let b_before = b.counts.snap();
    let b_started = Instant::now();
    // The app destroys its own session at logout, so its answer turns "anonymous" at
    // once; what is timed is sessiongate: B no longer sending the session's vault.
    let poller = tokio::spawn(async move {
        loop {
            let r = thief.get("/whoami").await;
            if r.app_sid.as_deref() != Some(vaulted.as_str()) {
                assert!(
                    r.sg.is_some(),
                    "B refuses the ID and replaces the cookie: {r:?}"
                );
                return (Instant::now(), vaulted);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let phase = a.cache_ttl.mul_f64((trial as f64 + 0.5) / trials as f64);
    tokio::time::sleep(phase).await;
    assert!(!poller.is_finished(), "B refused the ID before the logout");
    let s = a.counts.snap();
    let r = v.post("/logout", "").await;
    let logged_out = Instant::now();
    let logout = a.counts.snap().minus(&s);
    assert_eq!((r.status, r.body.as_str()), (200, "bye"), "{r:?}");
    assert_eq!(r.sg, Some(None), "the logout expires sessiongate's cookie");
    let (refused, vaulted) = tokio::time::timeout(a.cache_ttl * 5, poller)
        .await
        .unwrap_or_else(|_| panic!("replica B still honours a logged-out ID after 5 x cache_ttl"))
        .expect("the poller");
    let b_ops = b.counts.snap().minus(&b_before);
    let b_reads_per_s = b_ops.calls[LOAD] as f64 / b_started.elapsed().as_secs_f64();
    // A refuses at once: its cache holds the tombstone.
    let mut on_a = Visitor::holding(a, tls, &id);
    let r = on_a.get("/whoami").await;
    assert_ne!(
        r.app_sid.as_deref(),
        Some(vaulted.as_str()),
        "replica A refuses its own logout: {r:?}"
    );
    Revocation {
        delay: refused.saturating_duration_since(logged_out),
        logout,
        b_reads_per_s,
    }
}

// ---------------------------------------------------------------- the run

struct Results {
    backend: Vec<OpLatency>,
    logins: Vec<LoginSample>,
    warm: Vec<WarmRun>,
    revocations: Vec<Revocation>,
    anonymous: Vec<AnonymousRun>,
    cache_ttl: Duration,
}

async fn measure(plan: &Plan) -> Results {
    let collection = unique("bench");
    let backend_store = FirestoreStore::connect(PROJECT, "(default)", &collection)
        .await
        .unwrap_or_else(|e| panic!("connecting to Firestore: {e}"));
    let backend = backend_latency(&backend_store, plan.op_samples).await;

    let pki = support::Pki::new();
    let leaf = pki.leaf("proxy", &["localhost"]);
    let tls = pki.client_config(&[b"http/1.1"]);
    // The test suite's legacy app; its `x-app-sid` header says which app session a
    // request carried, which is how the bench sees whether a replica still serves a
    // session's vault.
    let legacy = support::legacy::LegacyApp::start().await;
    let app = legacy.up.addr;
    // A and B: two replicas with the default cache_ttl, sharing one collection.
    let text = replica_config(&leaf, app, &collection, None, false);
    let a = start_replica(&text).await;
    let b = start_replica(&text).await;
    assert_eq!(
        a.cache_ttl,
        Duration::from_secs(1),
        "the default cache_ttl is 1s"
    );
    // Let the sweep that each replica runs at start-up pass out of the counts.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut logins = Vec::new();
    let mut last = None;
    for i in 0..plan.logins {
        let user = format!("user{i}");
        let (sample, v) = login_once(&a, &[&b], &tls, &user, i % 2 == 0).await;
        logins.push(sample);
        last = Some((v, user));
    }
    let (v, user) = last.expect("at least one login");
    let id = v.sg.clone().expect("signed in");

    let session = (id.as_str(), user.as_str());
    let mut warm = vec![warm_run(&a, &tls, session, plan.requests, Duration::ZERO, false).await];
    // The app re-sending its cookie on every response: no store call for a no-op.
    warm.push(warm_run(&a, &tls, session, plan.requests, Duration::ZERO, true).await);
    // C: a replica whose cache outlives the run, so "warm" holds throughout.
    let c = start_replica(&replica_config(&leaf, app, &collection, Some("1h"), false)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    warm.push(warm_run(&c, &tls, session, plan.requests, Duration::ZERO, false).await);
    drop(c);
    // A person clicking every 1.5 cache_ttl: the entry is stale at every request.
    let gap = a.cache_ttl.mul_f64(1.5);
    warm.push(warm_run(&a, &tls, session, plan.paced, gap, false).await);

    let mut revocations = Vec::new();
    for t in 0..plan.revocations {
        revocations.push(revocation_trial(&a, &b, &tls, t, plan.revocations).await);
    }
    let mut anonymous = vec![anonymous_run(&a, &tls, plan.visitors).await];
    let d = start_replica(&replica_config(&leaf, app, &collection, None, true)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    anonymous.push(anonymous_run(&d, &tls, plan.visitors).await);
    drop(pki);
    Results {
        backend,
        logins,
        warm,
        revocations,
        anonymous,
        cache_ttl: a.cache_ttl,
    }
}

/// The invariants the README's claims rest on; a violation fails the run.
fn check(r: &Results) {
    for a in &r.anonymous {
        let n = a.visitors as u64;
        assert_eq!(a.once.errors() + a.returning.errors(), 0);
        match a.deferred {
            true => {
                assert_eq!(a.once.writes(), 0, "deferred: {}", a.once.describe());
                assert_eq!(a.returning.writes(), n, "{}", a.returning.describe());
            }
            false => {
                assert_eq!(a.once.writes(), n, "{}", a.once.describe());
                assert_eq!(a.returning.writes(), n, "{}", a.returning.describe());
            }
        }
    }
    for w in &r.warm {
        assert_eq!(w.ops.errors(), 0, "store errors: {}", w.ops.describe());
        assert_eq!(
            w.ops.transactions(),
            0,
            "ordinary requests must not run transactions: {}",
            w.ops.describe()
        );
        assert!(
            w.ops.writes() <= 5,
            "at most a handful of writes per {} requests: {}",
            w.requests,
            w.ops.describe()
        );
        // A fresh entry costs nothing; an expired one costs one read per TTL period
        // (the entry may have been nearly expired when the run began: hence the +1).
        let periods = (w.elapsed.as_secs_f64() / w.ttl.as_secs_f64()).floor() as u64 + 1;
        assert!(
            w.ops.reads() <= periods,
            "{} reads in {:?} with cache_ttl {:?}: more than one per TTL period ({})",
            w.ops.reads(),
            w.elapsed,
            w.ttl,
            w.ops.describe()
        );
        if w.ttl > w.elapsed * 2 {
            // The warm-up request filled the entry just before: it stayed fresh.
            assert_eq!(w.ops.reads(), 0, "warm cache: {}", w.ops.describe());
        }
        if w.gap > w.ttl {
            // An entry older than cache_ttl is never served: the revocation bound.
            assert_eq!(
                w.ops.calls[LOAD],
                w.requests as u64,
                "requests {:?} apart with cache_ttl {:?}: {}",
                w.gap,
                w.ttl,
                w.ops.describe()
            );
        }
    }
    for (i, l) in r.logins.iter().enumerate() {
        let ops = &l.login;
        assert_eq!(ops.errors(), 0, "login {i}: {}", ops.describe());
        assert_eq!(
            (ops.calls[CLAIM], ops.calls[ROTATE]),
            (1, 1),
            "login {i}: one claim and one rotation: {}",
            ops.describe()
        );
        // Firestore received: the claim's commit (1 write) and the rotation's (the new
        // document and the old one's tombstone), nothing else.
        assert_eq!(
            (ops.wire.calls("Commit"), ops.writes()),
            (2, 3),
            "login {i}: {}",
            ops.describe()
        );
        assert_eq!(
            ops.transactions(),
            2,
            "login {i}: no transaction besides claim and rotation: {}",
            ops.describe()
        );
        assert_eq!(
            ops.calls[CREATE] + ops.calls[TOUCH],
            0,
            "login {i}: {}",
            ops.describe()
        );
        assert!(
            ops.calls[LOAD] <= u64::from(l.cold),
            "login {i} (cold: {}): {}",
            l.cold,
            ops.describe()
        );
        assert_eq!(
            (l.first_visit.calls[CREATE], l.first_visit.reads()),
            (1, 0),
            "first visit: {}",
            l.first_visit.describe()
        );
        assert_eq!(
            l.after.reads() + l.after.writes(),
            0,
            "the request after a login runs on the cache: {}",
            l.after.describe()
        );
        assert_eq!(
            l.other_replica.reads() + l.other_replica.writes(),
            0,
            "another replica: {}",
            l.other_replica.describe()
        );
        assert!(
            l.latency >= r.cache_ttl,
            "login {i} took {:?}, less than the settle wait ({:?})",
            l.latency,
            r.cache_ttl
        );
    }
    for (i, rv) in r.revocations.iter().enumerate() {
        assert_eq!(
            (
                rv.logout.calls[REVOKE],
                rv.logout.writes(),
                rv.logout.transactions()
            ),
            (1, 1, 1),
            "logout {i}: {}",
            rv.logout.describe()
        );
        assert!(
            rv.delay <= r.cache_ttl + Duration::from_millis(500),
            "trial {i}: replica B honoured a logged-out ID for {:?} (cache_ttl {:?})",
            rv.delay,
            r.cache_ttl
        );
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn report(plan: &Plan, emulator: &Emulator, r: &Results) -> String {
    let mut o: Vec<String> = Vec::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    o.push(format!(
        "## Firestore store (`cargo bench --bench firestore_store`{})",
        if plan.full {
            ""
        } else {
            ", SHORT test-mode run"
        }
    ));
    o.push(String::new());
    o.push(format!(
        "Measured {} on {} cores ({}), Firestore emulator at {} ({}); the proxies, the app, the client and the emulator share the machine. Store calls are counted between each replica's cache and Firestore; RPCs, document reads and document writes on the wire between each replica and the emulator.",
        httpdate::fmt_http_date(SystemTime::now()),
        cores,
        cpu_model(),
        emulator.host,
        if emulator.started_here() { "started by the bench" } else { "FIRESTORE_EMULATOR_HOST" },
    ));
    o.push(String::new());

    o.push("### 1. Store operations per 1000 proxied requests, warm cache".into());
    o.push(String::new());
    o.push("| cache_ttl | requests, spacing | app re-sends its cookie | took | reads | writes | transactions | per 1000: reads / writes | request p50 / p99 |".into());
    o.push("|---|---|---|---|---|---|---|---|---|".into());
    for w in &r.warm {
        let per = |x: u64| x as f64 * 1000.0 / w.requests as f64;
        let spacing = if w.gap.is_zero() {
            "back to back".to_owned()
        } else {
            format!("{} apart", ms(w.gap))
        };
        o.push(format!(
            "| {:?} | {}, {spacing} | {} | {} | {} | {} | {} | {:.1} / {:.1} | {} / {} |",
            w.ttl,
            w.requests,
            if w.rolling { "yes" } else { "no" },
            ms(w.elapsed),
            w.ops.reads(),
            w.ops.writes(),
            w.ops.transactions(),
            per(w.ops.reads()),
            per(w.ops.writes()),
            ms(pct(&w.latencies, 0.5)),
            ms(pct(&w.latencies, 0.99)),
        ));
    }
    o.push(String::new());

    o.push(format!(
        "### 2. Store operations per login ({} logins; cache_ttl {:?})",
        r.logins.len(),
        r.cache_ttl
    ));
    o.push(String::new());
    o.push("| step | store calls (mean per login) | RPCs Firestore received | document reads | document writes |".into());
    o.push("|---|---|---|---|---|".into());
    let mean = |pick: &dyn Fn(&LoginSample) -> bool, f: &dyn Fn(&LoginSample) -> Snap| {
        let mut total = Snap::default();
        let mut n = 0u64;
        for l in r.logins.iter().filter(|l| pick(l)) {
            total.add(&f(l));
            n += 1;
        }
        (total, n.max(1))
    };
    let row = |o: &mut Vec<String>, step: &str, (s, n): (Snap, u64)| {
        let parts: Vec<String> = (0..OPS.len())
            .filter(|&i| s.calls[i] > 0)
            .map(|i| format!("{} {}", OPS[i].as_str(), s.calls[i] as f64 / n as f64))
            .collect();
        let rpcs: Vec<String> = s
            .wire
            .calls
            .iter()
            .map(|(m, c)| format!("{m} {}", *c as f64 / n as f64))
            .collect();
        let none = |v: Vec<String>| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(" + ")
            }
        };
        o.push(format!(
            "| {step} | {} | {} | {} | {} |",
            none(parts),
            none(rpcs),
            s.reads() as f64 / n as f64,
            s.writes() as f64 / n as f64
        ));
    };
    row(
        &mut o,
        "first visit (app sets its cookie)",
        mean(&|_| true, &|l| l.first_visit.clone()),
    );
    row(
        &mut o,
        "login request, within cache_ttl of the last request",
        mean(&|l| !l.cold, &|l| l.login.clone()),
    );
    row(
        &mut o,
        "login request, more than cache_ttl after the last request",
        mean(&|l| l.cold, &|l| l.login.clone()),
    );
    row(
        &mut o,
        "first request after the login",
        mean(&|_| true, &|l| l.after.clone()),
    );
    row(
        &mut o,
        "the other replica, meanwhile",
        mean(&|_| true, &|l| l.other_replica.clone()),
    );
    let mut logout = Snap::default();
    for rv in &r.revocations {
        logout.add(&rv.logout);
    }
    row(
        &mut o,
        "logout",
        (logout, (r.revocations.len() as u64).max(1)),
    );
    o.push(String::new());

    o.push(format!(
        "### 3. Latency (Firestore emulator; {} samples per store operation, {} logins)",
        plan.op_samples,
        r.logins.len()
    ));
    o.push(String::new());
    o.push("| operation | p50 | p99 | max |".into());
    o.push("|---|---|---|---|".into());
    for op in &r.backend {
        o.push(format!(
            "| `SessionStore::{}` (Firestore backend, no cache) | {} | {} | {} |",
            op.name,
            ms(pct(&op.samples, 0.5)),
            ms(pct(&op.samples, 0.99)),
            ms(pct(&op.samples, 1.0)),
        ));
    }
    let lat = sorted(r.logins.iter().map(|l| l.latency).collect());
    o.push(format!(
        "| login through the proxy (POST /login -> 303, client-side) | {} | {} | {} |",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(pct(&lat, 1.0)),
    ));
    let mut all = Snap::default();
    for l in &r.logins {
        all.add(&l.login);
    }
    let p50 = pct(&lat, 0.5);
    o.push(String::new());
    o.push(format!(
        "Inside the proxy's logins (mean): claim transaction {:.1} ms, settle wait {} (= cache_ttl), rotation transaction {:.1} ms, session load {:.1} ms when the cache was cold. The settle wait is {:.0}% of the median login.",
        all.mean_ms(CLAIM),
        ms(r.cache_ttl),
        all.mean_ms(ROTATE),
        all.mean_ms(LOAD),
        100.0 * r.cache_ttl.as_secs_f64() / p50.as_secs_f64().max(1e-9),
    ));
    o.push(String::new());

    let delays = sorted(r.revocations.iter().map(|v| v.delay).collect());
    let b_reads = r.revocations.iter().map(|v| v.b_reads_per_s).sum::<f64>()
        / (r.revocations.len().max(1)) as f64;
    o.push(format!(
        "### 4. Revocation delay across two replicas ({} trials, cache_ttl {:?})",
        r.revocations.len(),
        r.cache_ttl
    ));
    o.push(String::new());
    o.push(
        "| p50 | max | bound | replica B's reads while polling the session every 10 ms |".into(),
    );
    o.push("|---|---|---|---|".into());
    o.push(format!(
        "| {} | {} | cache_ttl + one read | {:.2} per second |",
        ms(pct(&delays, 0.5)),
        ms(pct(&delays, 1.0)),
        b_reads
    ));
    o.push(String::new());
    o.push("Delay: from the logout's response on replica A to the first response on replica B that no longer forwards the session's vaulted app cookie (B refused the ID); B is polled every 10 ms, and each trial logs out at a different point of B's cache period.".into());
    o.push(String::new());
    o.push("### 5. Anonymous visitors: document writes per new visitor".into());
    o.push(String::new());
    o.push("| `defer_anonymous_writes` | visitors per group | one request, never back: writes (per visitor) | back once: writes (per visitor) | reads, both groups |".into());
    o.push("|---|---|---|---|---|".into());
    for a in &r.anonymous {
        let per = |s: &Snap| s.writes() as f64 / a.visitors.max(1) as f64;
        o.push(format!(
            "| {} | {} | {} ({:.2}) | {} ({:.2}) | {} |",
            a.deferred,
            a.visitors,
            a.once.writes(),
            per(&a.once),
            a.returning.writes(),
            per(&a.returning),
            a.once.reads() + a.returning.reads(),
        ));
    }
    o.push(String::new());
    o.join("\n") + "\n"
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let plan = if full {
        Plan {
            full,
            requests: 1000,
            logins: 30,
            revocations: 20,
            paced: 10,
            op_samples: 200,
            visitors: 200,
        }
    } else {
        Plan {
            full,
            requests: 50,
            logins: 3,
            revocations: 2,
            paced: 2,
            op_samples: 10,
            visitors: 5,
        }
    };
    // Before the runtime starts any thread: this sets FIRESTORE_EMULATOR_HOST.
    let emulator = Emulator::ensure();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the tokio runtime");
    let results = rt.block_on(measure(&plan));
    rt.shutdown_timeout(Duration::from_secs(2));
    let table = report(&plan, &emulator, &results);
    println!("{table}");
    let out = target_dir().join(if full {
        "firestore_bench.md"
    } else {
        "firestore_bench.short.md"
    });
    match std::fs::write(&out, &table) {
        Ok(()) => println!("written to {}", out.display()),
        Err(e) => eprintln!("could not write {}: {e}", out.display()),
    }
    check(&results);
    drop(emulator);
}
