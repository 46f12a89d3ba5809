//! A tap between sessiongate and the Firestore emulator: an HTTP/2 (gRPC) forwarder that
//! counts what really reaches the store (RPCs by method, document writes inside each
//! commit) and can stop at any RPC, before or after the emulator has seen it, to cut
//! the store at a chosen point inside an operation.
#![allow(unused_imports)]

use super::*;

use std::collections::BTreeMap;

use ::firestore::gcloud_sdk::google::firestore::v1::CommitRequest;
use ::firestore::gcloud_sdk::prost::Message;
use hyper::client::conn::http2 as client_h2;
use hyper::server::conn::http2 as server_h2;

/// Where to stop an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutAt {
    /// The emulator never sees it.
    Before,
    /// The emulator processes it; its answer never comes back.
    After,
}

/// What the tap has seen, and where it is told to stop.
#[derive(Debug, Default)]
struct TapState {
    /// RPCs by method name (`Commit`, `BeginTransaction`, `GetDocument`, ...).
    calls: BTreeMap<String, u64>,
    /// Documents written: one per write inside a commit, one per create/update RPC.
    writes: u64,
    /// Every RPC, in order, since the tap was armed.
    log: Vec<String>,
    /// Stop the `n`-th RPC (counted from 1) after arming.
    cut: Option<(usize, CutAt)>,
    since_armed: usize,
    /// Whether a cut has fired.
    fired: bool,
}

#[derive(Clone)]
pub struct Tap {
    /// Point `FIRESTORE_EMULATOR_HOST` here.
    pub host: String,
    state: Arc<Mutex<TapState>>,
    /// Stopped RPCs wait on this until the tap is dropped (or `release` is called).
    release: Arc<tokio::sync::Notify>,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapCounts {
    pub calls: BTreeMap<String, u64>,
    pub writes: u64,
}

impl TapCounts {
    pub fn calls(&self, method: &str) -> u64 {
        self.calls.get(method).copied().unwrap_or(0)
    }

    pub fn total_calls(&self) -> u64 {
        self.calls.values().sum()
    }

    /// RPCs that read documents.
    pub fn reads(&self) -> u64 {
        [
            "GetDocument",
            "BatchGetDocuments",
            "RunQuery",
            "ListDocuments",
        ]
        .iter()
        .map(|m| self.calls(m))
        .sum()
    }

    /// What happened between two snapshots.
    pub fn since(&self, before: &TapCounts) -> TapCounts {
        let calls = self
            .calls
            .iter()
            .map(|(m, n)| (m.clone(), n - before.calls(m)))
            .filter(|(_, n)| *n > 0)
            .collect();
        TapCounts {
            calls,
            writes: self.writes - before.writes,
        }
    }
}

impl Tap {
    /// Starts a tap forwarding to the emulator at `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let tap = Tap {
            host,
            state: Arc::default(),
            release: Arc::default(),
        };
        let (t, upstream) = (tap.clone(), upstream.to_owned());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (t, upstream) = (t.clone(), upstream.clone());
                tokio::spawn(async move { t.serve(tcp, &upstream).await });
            }
        });
        tap
    }

    /// One client connection, with one emulator connection of its own.
    async fn serve(&self, tcp: TcpStream, upstream: &str) {
        let Ok(up) = TcpStream::connect(upstream).await else {
            return;
        };
        // Small RPCs back and forth: without this, Nagle and delayed ACKs add tens of
        // milliseconds to each.
        let _ = (tcp.set_nodelay(true), up.set_nodelay(true));
        let Ok((sender, conn)) = client_h2::handshake(TokioExecutor::new(), TokioIo::new(up)).await
        else {
            return;
        };
        tokio::spawn(conn);
        let tap = self.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (tap, mut sender) = (tap.clone(), sender.clone());
            async move { tap.forward(req, &mut sender).await }
        });
        let _ = server_h2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        sender: &mut client_h2::SendRequest<Body>,
    ) -> Result<Response<Body>, hyper::Error> {
        let method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await?.to_bytes();
        let cut = self.record(&method, &bytes);
        if cut == Some(CutAt::Before) {
            self.release.notified().await;
            return Ok(unavailable());
        }
        let req = Request::from_parts(parts, full_body(bytes));
        let resp = sender.send_request(req).await?;
        if cut == Some(CutAt::After) {
            // The emulator has answered; the answer is held back.
            self.release.notified().await;
            return Ok(unavailable());
        }
        Ok(resp.map(|b| {
            b.map_err(|e| -> sessiongate::BoxError { Box::new(e) })
                .boxed()
        }))
    }

    /// Counts one RPC and says whether to stop it.
    fn record(&self, method: &str, body: &[u8]) -> Option<CutAt> {
        let mut s = self.state.lock().unwrap();
        *s.calls.entry(method.to_owned()).or_default() += 1;
        s.writes += match method {
            "Commit" => grpc_message(body)
                .and_then(|m| CommitRequest::decode(m).ok())
                .map_or(0, |c| c.writes.len() as u64),
            "CreateDocument" | "UpdateDocument" | "DeleteDocument" => 1,
            _ => 0,
        };
        s.log.push(method.to_owned());
        s.since_armed += 1;
        match s.cut {
            Some((n, at)) if n == s.since_armed && !s.fired => {
                s.fired = true;
                Some(at)
            }
            _ => None,
        }
    }

    pub fn counts(&self) -> TapCounts {
        let s = self.state.lock().unwrap();
        TapCounts {
            calls: s.calls.clone(),
            writes: s.writes,
        }
    }

    /// Stops the `n`-th RPC from now (counted from 1) at `at`; the RPCs before it pass.
    pub fn arm(&self, n: usize, at: CutAt) {
        let mut s = self.state.lock().unwrap();
        s.cut = Some((n, at));
        s.since_armed = 0;
        s.fired = false;
        s.log.clear();
    }

    /// Whether the armed cut has stopped an RPC yet.
    pub fn fired(&self) -> bool {
        self.state.lock().unwrap().fired
    }

    /// The RPCs since the tap was armed, in order.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// Lets stopped RPCs fail (with `UNAVAILABLE`) and disarms the tap.
    pub fn release(&self) {
        self.state.lock().unwrap().cut = None;
        self.release.notify_waiters();
    }
}

/// The message of a unary gRPC request: a 5-byte frame header (compression flag,
/// big-endian length), then the protobuf bytes.
fn grpc_message(body: &[u8]) -> Option<&[u8]> {
    let (head, rest) = body.split_at_checked(5)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    (head[0] == 0).then(|| rest.get(..len)).flatten()
}

/// A gRPC `UNAVAILABLE` answer with no message.
fn unavailable() -> Response<Body> {
    Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", "14")
        .body(full_body(Bytes::new()))
        .unwrap()
}
