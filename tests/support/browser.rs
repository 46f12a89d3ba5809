//! A minimal browser: a cookie jar in front of fresh connections.
#![allow(unused_imports)]

use super::*;

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

impl Browser {
    /// Sends the next requests to another proxy (replica) of the same PKI.
    pub fn on(&mut self, proxy: &Proxy) -> &mut Browser {
        self.addr = proxy.addr;
        self
    }
}
