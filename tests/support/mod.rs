//! Shared test harness: a throw-away PKI, in-process upstream apps that record what
//! they received, the proxy started on port 0, and TLS clients speaking HTTP/1.1 or
//! HTTP/2 over real sockets.
#![allow(dead_code, clippy::unwrap_used)]

pub mod legacy;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use sessiongate::{full_body, Body, Config, Server};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Fails the test with context instead of hanging forever.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------- PKI

/// A test CA and leaf certificates written as PEM files in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    pub ca_der: CertificateDer<'static>,
    ca_pem: String,
}

pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sessiongate test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            ca_params: params,
            ca_key,
        }
    }

    /// Issues a certificate for `names` with a new key of the given algorithm, as files
    /// `<stem>.crt` and `<stem>.key`.
    pub fn leaf_with(
        &self,
        stem: &str,
        names: &[&str],
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> LeafFiles {
        let key = KeyPair::generate_for(alg).unwrap();
        let key_path = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let (cert, der) = self.issue(stem, names, &key);
        LeafFiles {
            cert,
            key: key_path,
            der,
        }
    }

    /// Issues a certificate for an existing key; returns the `<stem>.crt` path.
    pub fn sign_with_key(&self, stem: &str, names: &[&str], key: &KeyPair) -> PathBuf {
        self.issue(stem, names, key).0
    }

    fn issue(
        &self,
        stem: &str,
        names: &[&str],
        key: &KeyPair,
    ) -> (PathBuf, CertificateDer<'static>) {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(key, &issuer).unwrap();
        let path = self.dir.path().join(format!("{stem}.crt"));
        std::fs::write(&path, cert.pem()).unwrap();
        (path, cert.der().clone())
    }

    pub fn leaf(&self, stem: &str, names: &[&str]) -> LeafFiles {
        self.leaf_with(stem, names, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    pub fn write_ca(&self) -> PathBuf {
        let p = self.dir.path().join("ca.pem");
        std::fs::write(&p, &self.ca_pem).unwrap();
        p
    }

    /// A TLS server config for an upstream app, with a leaf for `localhost`.
    pub fn upstream_tls(&self) -> Arc<rustls::ServerConfig> {
        use rustls_pki_types::pem::PemObject;
        let leaf = self.leaf("upstream", &["localhost"]);
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(sessiongate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der], key)
            .unwrap();
        Arc::new(cfg)
    }

    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(sessiongate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

// ---------------------------------------------------------------- upstream apps

/// What an upstream app received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Upstream {
    /// An HTTP/1.1 app whose handler sees the raw request (for streaming tests).
    pub async fn raw<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Upstream::raw_with(None, handler).await
    }

    /// Like [`Upstream::raw`], over TLS when `tls` is given.
    pub async fn raw_with<F, Fut>(tls: Option<Arc<rustls::ServerConfig>>, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = &mut stopped => return,
                    r = listener.accept() => r.unwrap(),
                };
                let handler = handler.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => {
                            http.serve_connection(TokioIo::new(tcp), svc)
                                .with_upgrades()
                                .await
                        }
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(stream) => http.serve_connection(TokioIo::new(stream), svc).await,
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Upstream {
            addr,
            seen: Arc::new(Mutex::new(Vec::new())),
            stop: Some(stop),
        }
    }

    /// An app that buffers and records each request, then answers with `respond`.
    pub async fn recording<F>(respond: F) -> Upstream
    where
        F: Fn(&Seen) -> Response<Body> + Send + Sync + 'static,
    {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let respond = Arc::new(respond);
        let log = seen.clone();
        let mut up = Upstream::raw(move |req: Request<Incoming>| {
            let respond = respond.clone();
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let s = Seen {
                    method: parts.method,
                    uri: parts.uri,
                    version: parts.version,
                    headers: parts.headers,
                    body,
                };
                let resp = respond(&s);
                log.lock().unwrap().push(s);
                resp
            }
        })
        .await;
        up.seen = seen;
        up
    }

    /// An app answering 200 "ok" to everything.
    pub async fn ok() -> Upstream {
        Upstream::recording(|_| Response::new(full_body("ok"))).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream received no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

// ---------------------------------------------------------------- the proxy

pub struct Proxy {
    pub addr: SocketAddr,
    pub plain: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub handle: sessiongate::ServerHandle,
    pub pki: Arc<Pki>,
    pub sessions: Arc<sessiongate::rotate::Sessions>,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The `[server]` and `[tls]` tables every test proxy uses, on port 0 with a leaf for
/// `localhost`, `a.test` and `b.test` from the test CA.
pub fn base_config(pki: &Pki) -> String {
    let leaf = pki.leaf("proxy", &["localhost", "a.test", "b.test"]);
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
worker_threads = 2
shutdown_grace = "5s"

[[tls.certificates]]
cert = "{}"
key = "{}"
"#,
        leaf.cert.display(),
        leaf.key.display()
    )
}

impl Proxy {
    /// Starts the proxy with the base config plus `extra` (routes and other tables).
    pub async fn start(extra: &str) -> Proxy {
        let pki = Arc::new(Pki::new());
        let text = format!("{}\n{}", base_config(&pki), extra);
        Proxy::start_with(pki, &text).await
    }

    pub async fn start_with(pki: Arc<Pki>, text: &str) -> Proxy {
        Proxy::start_with_store(pki, text, None).await
    }

    /// Starts the proxy on a given session store (fault injection).
    pub async fn start_with_store(
        pki: Arc<Pki>,
        text: &str,
        store: Option<Arc<dyn sessiongate::store::SessionStore>>,
    ) -> Proxy {
        let config = Config::from_toml(text, Path::new("."))
            .unwrap_or_else(|e| panic!("test config rejected: {e}\n{text}"));
        let server = Server::bind_with_store(config, store).await.unwrap();
        let sessions = server.sessions();
        let admin = server.admin_addr();
        let handle = server.handle();
        let addr = server
            .tls_addr()
            .unwrap_or_else(|| server.plain_addr().unwrap());
        let plain = server.plain_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            plain,
            admin,
            handle,
            pki,
            sessions,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Signals shutdown and returns the task so a test can await the drain.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.take().unwrap()
    }

    pub async fn tls(&self, server_name: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        tls_connect(self.addr, self.pki.client_config(alpn), server_name).await
    }

    /// An HTTP/1.1 client connection over TLS (SNI `localhost`).
    pub async fn h1(&self) -> H1 {
        H1::over(self.tls("localhost", &[b"http/1.1"]).await).await
    }

    /// An HTTP/2 client connection over TLS (ALPN h2).
    pub async fn h2(&self) -> H2 {
        let tls = self.tls("localhost", &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        H2 { send }
    }

    /// One GET over a fresh HTTP/1.1 connection.
    pub async fn get(&self, path: &str) -> Reply {
        self.h1().await.send(get(path)).await
    }
}

pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(cfg)
        .connect(ServerName::try_from(server_name.to_owned()).unwrap(), tcp)
        .await
        .unwrap()
}

// ---------------------------------------------------------------- clients

pub fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("host", "localhost")
        .body(full_body(Bytes::new()))
        .unwrap()
}

/// A response with its body read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

pub async fn read(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = within("reading the response body", body.collect())
        .await
        .unwrap()
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub struct H1 {
    pub send: hyper::client::conn::http1::SendRequest<Body>,
}

impl H1 {
    pub async fn over<IO>(io: IO) -> H1
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        H1 { send }
    }

    pub async fn send(&mut self, req: Request<Body>) -> Reply {
        read(self.send_raw(req).await).await
    }

    pub async fn send_raw(&mut self, req: Request<Body>) -> Response<Incoming> {
        within("HTTP/1.1 response", async {
            self.send.ready().await.unwrap();
            self.send.send_request(req).await.unwrap()
        })
        .await
    }
}

pub struct H2 {
    pub send: hyper::client::conn::http2::SendRequest<Body>,
}

impl H2 {
    pub async fn send(&mut self, req: Request<Body>) -> Reply {
        let resp = within("HTTP/2 response", async {
            self.send.ready().await.unwrap();
            self.send.send_request(req).await.unwrap()
        })
        .await;
        read(resp).await
    }
}

/// A body that is sent in chunks as the test pushes them.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| {
            (
                Ok::<_, sessiongate::BoxError>(hyper::body::Frame::data(b)),
                rx,
            )
        })
    });
    (tx, http_body_util::StreamBody::new(stream).boxed())
}

pub fn text_response(status: u16, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full_body(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

// ---------------------------------------------------------------- a browser

/// A minimal browser: a cookie jar (name -> value, honouring deletion by `Max-Age=0` or a
/// past `Expires`) in front of fresh HTTP/1.1 connections through the proxy. Attacks
/// plant cookies with [`Browser::plant`].
pub struct Browser {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub jar: std::collections::BTreeMap<String, String>,
}

impl Browser {
    pub fn new(proxy: &Proxy) -> Browser {
        Browser {
            addr: proxy.addr,
            tls: Some(proxy.pki.client_config(&[b"http/1.1"])),
            jar: Default::default(),
        }
    }

    /// A browser talking plain HTTP straight to an app (to show an attack without the
    /// proxy).
    pub fn direct(addr: SocketAddr) -> Browser {
        Browser {
            addr,
            tls: None,
            jar: Default::default(),
        }
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.jar.get(name).map(String::as_str)
    }

    pub fn plant(&mut self, name: &str, value: &str) {
        self.jar.insert(name.to_owned(), value.to_owned());
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send(Request::get(path).body(full_body("")).unwrap())
            .await
    }

    pub async fn post_form(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let req = Request::post(path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full_body(body))
            .unwrap();
        self.send(req).await
    }

    pub async fn send(&mut self, mut req: Request<Body>) -> Reply {
        let h = req.headers_mut();
        h.insert("host", http::HeaderValue::from_static("localhost"));
        if !self.jar.is_empty() {
            let cookie = self
                .jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            h.insert("cookie", cookie.parse().unwrap());
        }
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let reply = match &self.tls {
            Some(cfg) => {
                let tls = TlsConnector::from(cfg.clone())
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .unwrap();
                H1::over(tls).await.send(req).await
            }
            None => H1::over(tcp).await.send(req).await,
        };
        for line in reply.set_cookies() {
            self.store(&line);
        }
        reply
    }

    fn store(&mut self, line: &str) {
        let c = sessiongate::cookies::SetCookie::parse(line.as_bytes()).unwrap();
        let name = String::from_utf8_lossy(c.name).into_owned();
        let deleted = c.attributes.iter().any(|a| {
            (a.is("max-age") && a.value.first() == Some(&b'-'))
                || (a.is("max-age") && a.value == b"0")
                || (a.is("expires") && a.value.ends_with(b"1970 00:00:00 GMT"))
        });
        if deleted {
            self.jar.remove(&name);
        } else {
            self.jar
                .insert(name, String::from_utf8_lossy(c.value).into_owned());
        }
    }
}

// ---------------------------------------------------------------- a store that fails on demand

/// The embedded store with fault injection: while `failing` holds an operation name
/// (or `"*"`), that operation returns `Unavailable`.
pub struct FaultyStore {
    pub inner: sessiongate::store::MemoryStore,
    pub failing: Mutex<Option<&'static str>>,
}

impl FaultyStore {
    pub fn new() -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner: sessiongate::store::MemoryStore::new(),
            failing: Mutex::new(None),
        })
    }

    pub fn fail(&self, op: Option<&'static str>) {
        *self.failing.lock().unwrap() = op;
    }

    fn check(&self, op: &str) -> Result<(), sessiongate::store::StoreError> {
        match *self.failing.lock().unwrap() {
            Some(f) if f == "*" || f == op => Err(sessiongate::store::StoreError::Unavailable(
                format!("injected failure in {op}"),
            )),
            _ => Ok(()),
        }
    }
}

mod faulty_impl {
    use super::FaultyStore;
    use sessiongate::session::SessionKey;
    use sessiongate::store::*;
    use sessiongate::vault::VaultChange;

    #[async_trait::async_trait]
    impl SessionStore for FaultyStore {
        async fn load(&self, key: &SessionKey) -> Result<Lookup, StoreError> {
            self.check("load")?;
            self.inner.load(key).await
        }
        async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
            self.check("create")?;
            self.inner.create(key, record).await
        }
        async fn merge_vault(
            &self,
            key: &SessionKey,
            changes: &[VaultChange],
            now: u64,
            expires_at: u64,
        ) -> Result<Option<SessionRecord>, StoreError> {
            self.check("merge_vault")?;
            self.inner.merge_vault(key, changes, now, expires_at).await
        }
        async fn touch(
            &self,
            key: &SessionKey,
            now: u64,
            expires_at: u64,
        ) -> Result<(), StoreError> {
            self.check("touch")?;
            self.inner.touch(key, now, expires_at).await
        }
        async fn claim_login(
            &self,
            key: &SessionKey,
            until: u64,
            now: u64,
        ) -> Result<Claim, StoreError> {
            self.check("claim_login")?;
            self.inner.claim_login(key, until, now).await
        }
        async fn release_login(&self, key: &SessionKey) -> Result<(), StoreError> {
            self.check("release_login")?;
            self.inner.release_login(key).await
        }
        async fn rotate(
            &self,
            old: &SessionKey,
            new: &SessionKey,
            rotation: &Rotation,
        ) -> Result<RotateOutcome, StoreError> {
            self.check("rotate")?;
            self.inner.rotate(old, new, rotation).await
        }
        async fn revoke(
            &self,
            key: &SessionKey,
            reason: RevokeReason,
            keep_until: u64,
        ) -> Result<bool, StoreError> {
            self.check("revoke")?;
            self.inner.revoke(key, reason, keep_until).await
        }
        async fn sweep(&self, now: u64) -> Result<usize, StoreError> {
            self.check("sweep")?;
            self.inner.sweep(now).await
        }
    }
}

// ---------------------------------------------------------------- Firestore

/// A `[store]` table for Firestore on the emulator that `tests/run-all.sh` started
/// (`FIRESTORE_EMULATOR_HOST`), in a collection of its own so tests never share data.
pub fn firestore_store(tag: &str, cache_ttl: &str) -> String {
    assert!(
        std::env::var_os("FIRESTORE_EMULATOR_HOST").is_some(),
        "FIRESTORE_EMULATOR_HOST is not set: run the suite with `bash tests/run-all.sh`, which starts the Firestore emulator"
    );
    format!(
        "[store]\nkind = \"firestore\"\nproject_id = \"sessiongate-test\"\ncollection = \"{}\"\ncache_ttl = \"{cache_ttl}\"\n",
        unique_name(tag)
    )
}

/// A name no other test (or earlier run) uses.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{tag}_{nanos}_{n}_{}", std::process::id())
}

impl Browser {
    /// Sends the next requests to another proxy (replica) of the same PKI.
    pub fn on(&mut self, proxy: &Proxy) -> &mut Browser {
        self.addr = proxy.addr;
        self
    }
}

/// A Firestore emulator of a test's own, for tests that stop it. Dropping it kills it.
pub struct Emulator {
    child: std::process::Child,
    pub host: String,
}

impl Emulator {
    /// Starts the emulator (the jar `tests/run-all.sh` found, or the Debian package's
    /// path) on a free port and waits until it answers.
    pub fn start() -> Emulator {
        let jar = std::env::var("SESSIONGATE_FIRESTORE_EMULATOR_JAR").unwrap_or_else(|_| {
            "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar".into()
        });
        assert!(
            Path::new(&jar).exists(),
            "the Firestore emulator jar {jar} is missing: install google-cloud-cli-firestore-emulator (see tests/run-all.sh)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("java")
            .args([
                "-cp",
                &jar,
                "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
                "start",
            ])
            .arg("--host=127.0.0.1")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("java is needed to run the Firestore emulator");
        let host = format!("127.0.0.1:{port}");
        let started = std::time::Instant::now();
        loop {
            if emulator_answers(&host) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the Firestore emulator did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Emulator { child, host }
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Freezes the emulator: connections stay open but nothing answers, like a partition.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn emulator_answers(host: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.trim_end().ends_with("Ok")
}

// ---------------------------------------------------------------- the binary

/// The `sessiongate` binary running as an operator runs it, with JSON logs collected.
/// Dropping it kills it (SIGKILL).
pub struct Sessiongate {
    child: Option<std::process::Child>,
    /// The plain-HTTP listener, else the TLS one.
    pub addr: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Sessiongate {
    /// Starts `sessiongate --config <config>` (listeners on port 0) and waits for the
    /// line naming the bound addresses.
    pub fn spawn(config: &Path, envs: &[(&str, &str)]) -> Sessiongate {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
            .args(["--config", config.to_str().unwrap(), "--log-format", "json"])
            .envs(envs.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let fields = loop {
            let line = lines
                .next()
                .expect("sessiongate exited before serving")
                .unwrap();
            log.lock().unwrap().push(line.clone());
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["fields"]["message"] == "serving" {
                break v["fields"].clone();
            }
        };
        let addr = |k: &str| {
            fields[k]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok())
        };
        // Keep draining, so the child never blocks on a full pipe.
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Sessiongate {
            child: Some(child),
            addr: addr("plain").or(addr("tls")).expect("no listener"),
            tls: addr("tls"),
            admin: addr("admin"),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal (`-HUP`, ...).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits until a log line contains `needle` (after `skip` lines), within 10 s.
    pub async fn wait_for_log(&self, needle: &str, skip: usize) -> String {
        for _ in 0..200 {
            if let Some(l) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .skip(skip)
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no log line with {needle:?}: {:?}",
            self.log.lock().unwrap()
        );
    }

    pub fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// SIGTERM, then wait for the exit.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let mut child = self.child.take().unwrap();
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        // The log thread ends with the pipe; give it a moment to flush.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = self.log.lock().unwrap().clone();
        (status, log)
    }
}

impl Drop for Sessiongate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET` on a plain-HTTP admin listener: status and body.
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let r = H1::over(tcp).await.send(get(path)).await;
    (r.status.as_u16(), r.text())
}

/// The value of one sample in Prometheus text (`name{labels}` exactly as rendered), or 0.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}
