//! The sessiongate binary as a child process.
#![allow(unused_imports)]

use super::*;

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

/// A request with `headers` on a plain-HTTP admin listener: status and body.
pub async fn admin_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", addr.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = H1::over(tcp)
        .await
        .send(req.body(full_body("")).unwrap())
        .await;
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
