//! TLS clients speaking HTTP/1.1 or HTTP/2 over real sockets, and their replies.
#![allow(unused_imports)]

use super::*;

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
