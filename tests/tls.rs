//! TLS termination: handshakes over real sockets, ALPN, SNI certificate selection, and
//! refusal of protocol versions older than TLS 1.2.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn http1_and_http2_are_both_served() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&format!("[[routes]]\nupstream = \"{}\"", up.url())).await;

    let r = proxy.get("/one").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");

    let mut h2 = proxy.h2().await;
    let r = h2
        .send(
            http::Request::get("https://localhost/two")
                .body(sessiongate::full_body(""))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");

    // The app saw both, over HTTP/1.1, with the client's host.
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].uri.path(), "/two");
    assert_eq!(seen[1].version, http::Version::HTTP_11);
    assert_eq!(seen[1].headers["host"], "localhost");
}

#[tokio::test]
async fn sni_selects_the_matching_certificate() {
    let pki = Arc::new(Pki::new());
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf_with("b", &["b.test", "*.wild.test"], &rcgen::PKCS_ED25519);
    let up = Upstream::ok().await;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[[tls.certificates]]
cert = "{}"
key = "{}"
server_names = ["a.test"]
[[tls.certificates]]
cert = "{}"
key = "{}"
server_names = ["b.test", "*.wild.test"]
[[routes]]
upstream = "{}"
"#,
        a.cert.display(),
        a.key.display(),
        b.cert.display(),
        b.key.display(),
        up.url()
    );
    let proxy = Proxy::start_with(pki.clone(), &text).await;

    for (name, want) in [
        ("a.test", &a.der),
        ("b.test", &b.der),
        ("x.wild.test", &b.der),
    ] {
        let tls = proxy.tls(name, &[b"http/1.1"]).await;
        let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(&presented, want, "certificate presented for SNI {name}");
    }
}

#[tokio::test]
async fn rsa_certificates_load_and_serve() {
    // ring cannot generate RSA keys, so the system's openssl makes one.
    let pki = Arc::new(Pki::new());
    let dir = pki.dir.path();
    let key = dir.join("rsa.key");
    let status = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is needed to make an RSA test key");
    assert!(status.success());
    let pem = std::fs::read_to_string(&key).unwrap();
    let rsa = rcgen::KeyPair::from_pem(&pem).unwrap();
    let cert = pki.sign_with_key("rsa", &["localhost"], &rsa);
    let up = Upstream::ok().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n[[routes]]\nupstream = \"{}\"\n",
        cert.display(),
        key.display(),
        up.url()
    );
    let proxy = Proxy::start_with(pki, &text).await;
    assert_eq!(proxy.get("/").await.status, 200);
}

/// A TLS 1.1 ClientHello (no supported_versions extension) must be answered with a
/// fatal `protocol_version` alert, not a handshake.
#[tokio::test]
async fn tls_1_1_is_refused() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&format!("[[routes]]\nupstream = \"{}\"", up.url())).await;

    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // session id
                   // A suite the server supports, so that only the version can be the reason.
    hello.extend_from_slice(&[0x00, 0x06, 0xc0, 0x2b, 0xc0, 0x13, 0x00, 0x2f]);
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
                                            // signature_algorithms (ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256), which rustls
                                            // requires before it looks at the version.
    hello.extend_from_slice(&[
        0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04,
    ]);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(hello.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x02];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);

    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    let mut reply = Vec::new();
    within("the server's answer", tcp.read_to_end(&mut reply))
        .await
        .unwrap();
    assert!(reply.len() >= 7, "expected an alert record, got {reply:?}");
    assert_eq!(reply[0], 0x15, "record type must be alert, got {reply:?}");
    assert_eq!(reply[5], 2, "alert level must be fatal");
    assert_eq!(reply[6], 70, "alert must be protocol_version");
}

#[tokio::test]
async fn garbage_instead_of_a_handshake_does_not_hurt_the_listener() {
    let up = Upstream::ok().await;
    let proxy = Proxy::start(&format!("[[routes]]\nupstream = \"{}\"", up.url())).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = within("close after garbage", tcp.read_to_end(&mut reply)).await;
    assert!(
        !reply.starts_with(b"HTTP/"),
        "plain HTTP must not be answered on the TLS port"
    );
    // The next real client is served.
    assert_eq!(proxy.get("/").await.status, 200);
}
