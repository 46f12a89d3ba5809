//! sessiongate started in-process on port 0, and its config.
#![allow(unused_imports)]

use super::*;

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
