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

mod binary;
mod browser;
mod clients;
mod emulator;
mod faulty;
mod pki;
mod proxy;
mod tap;
mod upstream;

#[allow(unused_imports)]
pub use binary::*;
#[allow(unused_imports)]
pub use browser::*;
#[allow(unused_imports)]
pub use clients::*;
#[allow(unused_imports)]
pub use emulator::*;
#[allow(unused_imports)]
pub use faulty::*;
#[allow(unused_imports)]
pub use pki::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use tap::*;
#[allow(unused_imports)]
pub use upstream::*;
