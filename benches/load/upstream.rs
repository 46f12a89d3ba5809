//! The upstream app for `benches/load/load.sh`: a minimal HTTP/1.1 keep-alive server that
//! answers every request with a small body and one Set-Cookie (so that both proxies in
//! the comparison do their cookie work), on one thread.
//!
//! Usage: bench-upstream PORT

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(18080);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(_) => continue,
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        let mut resp =
                            Response::new(Full::new(Bytes::from_static(b"hello from the app\n")));
                        resp.headers_mut().insert(
                            "set-cookie",
                            http::HeaderValue::from_static("session=4f2a9c1d; Path=/"),
                        );
                        Ok::<_, Infallible>(resp)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}
