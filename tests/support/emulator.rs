//! Google's Firestore emulator, and Firestore store configs.
#![allow(unused_imports)]

use super::*;

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
