//! In-process upstream apps that record what they received.
#![allow(unused_imports)]

use super::*;

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
