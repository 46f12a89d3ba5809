//! End-to-end stacks: real, unchanged, session-fixation-vulnerable apps from other
//! ecosystems behind the proxy.
//!
//! * PHP's built-in server with native sessions (`PHPSESSID`), strict mode off and ids
//!   accepted from the URL (`tests/apps/php/index.php`): login answers 302 to /account.
//! * A Flask app with a hand-rolled server-side session store keyed by a `sid` cookie
//!   (`tests/apps/flask_app.py`): login answers 200 "Welcome back, <user>".
//!
//! Each stack first shows the fixation attack working straight against the app, then that
//! it fails through sessiongate. The interpreters come from `SESSIONGATE_E2E_PHP` and
//! `SESSIONGATE_E2E_PYTHON` (set by `tests/run-all.sh`, which installs them); a missing
//! interpreter fails the test, it is never skipped.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// sessiongate's own cookie (the default name).
const SG: &str = "__Host-sg";
const HINT: &str = "run `bash tests/run-all.sh`, which installs php-cli and the Flask venv \
                    (target/e2e-venv) and sets SESSIONGATE_E2E_PHP / SESSIONGATE_E2E_PYTHON";

// ---------------------------------------------------------------- the two stacks

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stack {
    Php,
    Flask,
}

impl Stack {
    /// The app's own session cookie, which sessiongate vaults.
    fn app_cookie(self) -> &'static str {
        match self {
            Stack::Php => "PHPSESSID",
            Stack::Flask => "sid",
        }
    }

    /// The session id an attacker picks and plants in the victim's browser.
    fn attacker_id(self) -> &'static str {
        match self {
            Stack::Php => "attackerchosen123",
            Stack::Flask => "attackerchosen",
        }
    }

    fn login_criteria(self) -> &'static str {
        match self {
            Stack::Php => {
                r#"success = { status = [302], header = { name = "location", regex = "^/account" } }
failure = { body_contains = "Invalid credentials" }"#
            }
            Stack::Flask => {
                r#"success = { status = [200], body_contains = "Welcome back" }
failure = { body_contains = "Login failed" }"#
            }
        }
    }

    /// The sessiongate config (besides `[server]` and `[tls]`) for this stack's app.
    fn config(self, app: &App) -> String {
        format!(
            r#"
[session]
# cookie_name = "__Host-sg" (default)

[[routes]]
upstream = "http://{addr}"

[routes.session]
vault = ["{cookie}"]
strip_request_session_ids = true

[[routes.session.login]]
path = "/login"
{criteria}
subject = {{ form_field = "username" }}

[[routes.session.logout]]
path = "/logout"
methods = ["POST"]
clear_site_data = true
"#,
            addr = app.addr,
            cookie = self.app_cookie(),
            criteria = self.login_criteria(),
        )
    }

    fn assert_login_ok(self, r: &Reply, user: &str) {
        match self {
            Stack::Php => {
                assert_eq!(r.status, 302, "PHP login of {user} should redirect: {r:?}");
                let to = r.headers.get("location").map(|v| v.to_str().unwrap());
                assert!(
                    to.is_some_and(|l| l.starts_with("/account")),
                    "PHP login should redirect to /account: {r:?}"
                );
            }
            Stack::Flask => {
                assert_eq!(r.status, 200, "Flask login of {user}: {r:?}");
                assert_eq!(r.text().trim(), format!("Welcome back, {user}"));
            }
        }
    }

    fn assert_login_failed(self, r: &Reply) {
        assert_eq!(
            r.status, 200,
            "a failed login answers 200 on both stacks: {r:?}"
        );
        let text = r.text();
        match self {
            Stack::Php => assert!(text.contains("Invalid credentials"), "{text:?}"),
            Stack::Flask => assert!(text.contains("Login failed"), "{text:?}"),
        }
    }

    fn assert_logout_ok(self, r: &Reply) {
        match self {
            Stack::Php => {
                assert_eq!(r.status, 302, "PHP logout: {r:?}");
                assert_eq!(r.headers.get("location").unwrap(), "/");
            }
            Stack::Flask => {
                assert_eq!(r.status, 200, "Flask logout: {r:?}");
                assert_eq!(r.text().trim(), "Bye");
            }
        }
    }

    /// GET /account as `user` (or anonymously) and check the answer.
    async fn assert_account(self, b: &mut Browser, user: Option<&str>) {
        let r = b.get("/account").await;
        match (user, self) {
            (Some(user), _) => {
                assert_eq!(r.status, 200, "/account as {user}: {r:?}");
                assert_eq!(r.text().trim(), format!("Account of {user}"));
            }
            (None, Stack::Php) => {
                assert_eq!(r.status, 302, "anonymous /account: {r:?}");
                assert_eq!(r.headers.get("location").unwrap(), "/login");
                assert!(!r.text().contains("Account of"), "{r:?}");
            }
            (None, Stack::Flask) => {
                assert_eq!(r.status, 401, "anonymous /account: {r:?}");
                assert_eq!(r.text().trim(), "Not logged in");
            }
        }
    }
}

// ---------------------------------------------------------------- the app processes

/// An app process on a free port, killed (by PID) when dropped.
struct App {
    stack: Stack,
    child: Child,
    addr: SocketAddr,
    /// Holds the app's log and, for PHP, its session files.
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The interpreter from `var`, else `fallback`; a path that does not exist fails here.
fn interpreter(var: &str, fallback: &str) -> String {
    let program = std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| fallback.to_owned());
    if program.contains('/') && !Path::new(&program).exists() {
        panic!("interpreter {program:?} (from {var} or its default) does not exist: {HINT}");
    }
    program
}

impl App {
    async fn start(stack: Stack) -> App {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let apps = root.join("tests/apps");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let (program, args): (String, Vec<String>) = match stack {
            Stack::Php => {
                let sessions = dir.path().join("sessions");
                std::fs::create_dir(&sessions).unwrap();
                let docroot = apps.join("php");
                (
                    interpreter("SESSIONGATE_E2E_PHP", "php"),
                    vec![
                        "-S".into(),
                        addr.to_string(),
                        "-t".into(),
                        docroot.display().to_string(),
                        "-d".into(),
                        "session.use_strict_mode=0".into(),
                        "-d".into(),
                        "session.use_only_cookies=0".into(),
                        "-d".into(),
                        "session.use_trans_sid=1".into(),
                        "-d".into(),
                        format!("session.save_path={}", sessions.display()),
                        docroot.join("index.php").display().to_string(),
                    ],
                )
            }
            Stack::Flask => {
                let venv = root.join("target/e2e-venv/bin/python");
                (
                    interpreter("SESSIONGATE_E2E_PYTHON", &venv.display().to_string()),
                    vec![
                        apps.join("flask_app.py").display().to_string(),
                        port.to_string(),
                    ],
                )
            }
        };
        let log = std::fs::File::create(dir.path().join("app.log")).unwrap();
        let child = Command::new(&program)
            .args(&args)
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // One process: no PHP worker children that would outlive a kill by PID.
            .env_remove("PHP_CLI_SERVER_WORKERS")
            .env("PYTHONUNBUFFERED", "1")
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start the {stack:?} app with {program:?}: {e}: {HINT}")
            });
        let mut app = App {
            stack,
            child,
            addr,
            dir,
        };
        app.wait_ready().await;
        app
    }

    /// Waits until the app accepts TCP connections; fails loudly after 20 s or if the
    /// process exits.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the {:?} app exited before listening on {} ({status}): {HINT}\n--- app log ---\n{}",
                    self.stack,
                    self.addr,
                    self.log()
                );
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the {:?} app did not listen on {} within 20 s\n--- app log ---\n{}",
                    self.stack,
                    self.addr,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("app.log")).unwrap_or_default()
    }

    /// PHP only: whether the app ever opened a session under `id` (PHP's files handler
    /// creates `sess_<id>` as soon as `session_start()` runs with that id).
    fn php_saw_session_id(&self, id: &str) -> bool {
        assert_eq!(self.stack, Stack::Php);
        self.sessions_dir().join(format!("sess_{id}")).exists()
    }

    fn sessions_dir(&self) -> PathBuf {
        self.dir.path().join("sessions")
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {:?} app log ---\n{}", self.stack, self.log());
        }
    }
}

// ---------------------------------------------------------------- helpers

async fn whoami(b: &mut Browser) -> String {
    let r = b.get("/whoami").await;
    assert_eq!(r.status, 200, "/whoami: {r:?}");
    r.text().trim().to_owned()
}

async fn login(b: &mut Browser, path: &str, user: &str, password: &str) -> Reply {
    b.post_form(path, &[("username", user), ("password", password)])
        .await
}

fn sg(b: &Browser) -> String {
    b.cookie(SG)
        .unwrap_or_else(|| panic!("the browser holds no {SG}: {:?}", b.jar))
        .to_owned()
}

/// The browser never holds the app's session cookie, only sessiongate's.
fn assert_only_sg(stack: Stack, b: &Browser) {
    assert!(
        b.jar.keys().all(|k| k == SG),
        "the browser should hold only {SG}, never {}: {:?}",
        stack.app_cookie(),
        b.jar
    );
}

async fn start(stack: Stack) -> (App, Proxy) {
    let app = within("starting the app", App::start(stack)).await;
    let proxy = Proxy::start(&stack.config(&app)).await;
    (app, proxy)
}

// ---------------------------------------------------------------- the scenarios

/// The fixation attack straight against the app: the attacker's chosen id, planted in the
/// victim's browser, is the id of the victim's logged-in session.
async fn direct_attack_succeeds_without_the_proxy(stack: Stack) {
    let app = within("starting the app", App::start(stack)).await;
    let (cookie, id) = (stack.app_cookie(), stack.attacker_id());

    let mut victim = Browser::direct(app.addr);
    victim.plant(cookie, id);
    let r = victim.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim(), "Hello, anonymous");
    stack.assert_login_ok(
        &login(&mut victim, "/login", "alice", "wonderland").await,
        "alice",
    );
    assert_eq!(whoami(&mut victim).await, "alice");
    assert_eq!(
        victim.cookie(cookie),
        Some(id),
        "the app kept the planted id"
    );

    let mut attacker = Browser::direct(app.addr);
    attacker.plant(cookie, id);
    assert_eq!(
        whoami(&mut attacker).await,
        "alice",
        "the attack should work directly"
    );
    stack.assert_account(&mut attacker, Some("alice")).await;

    if stack == Stack::Php {
        // The same through the URL: the victim follows links carrying ?PHPSESSID=.
        let mut victim = Browser::direct(app.addr);
        let r = victim.get("/?PHPSESSID=attackerurl1").await;
        assert_eq!(r.text().trim(), "Hello, anonymous");
        let r = login(
            &mut victim,
            "/login?PHPSESSID=attackerurl1",
            "alice",
            "wonderland",
        )
        .await;
        stack.assert_login_ok(&r, "alice");
        let mut attacker = Browser::direct(app.addr);
        attacker.plant("PHPSESSID", "attackerurl1");
        assert_eq!(
            whoami(&mut attacker).await,
            "alice",
            "URL fixation should work directly"
        );
    }
}

async fn login_logout_through_the_proxy(stack: Stack) {
    let (_app, proxy) = start(stack).await;
    let mut b = Browser::new(&proxy);

    let r = b.get("/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text().trim(), "Hello, anonymous");
    assert_eq!(
        b.jar.keys().collect::<Vec<_>>(),
        [SG],
        "after the first visit the browser holds exactly {SG}"
    );
    let anonymous_id = sg(&b);
    assert_eq!(whoami(&mut b).await, "anonymous");
    assert_eq!(sg(&b), anonymous_id, "an ordinary request keeps the ID");

    let r = login(&mut b, "/login", "alice", "wonderland").await;
    stack.assert_login_ok(&r, "alice");
    assert_only_sg(stack, &b);
    let alice_id = sg(&b);
    assert_ne!(alice_id, anonymous_id, "a login must rotate {SG}");
    assert_eq!(whoami(&mut b).await, "alice");
    stack.assert_account(&mut b, Some("alice")).await;
    assert_only_sg(stack, &b);

    let r = b.post_form("/logout", &[]).await;
    stack.assert_logout_ok(&r);
    let csd = r
        .headers
        .get("clear-site-data")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        csd.as_deref().is_some_and(|v| v.contains("\"cookies\"")),
        "logout with clear_site_data should send Clear-Site-Data: \"cookies\", got {csd:?}"
    );
    // This browser ignores Clear-Site-Data: whatever it still holds is logged out.
    assert_only_sg(stack, &b);
    assert_eq!(whoami(&mut b).await, "anonymous");
    stack.assert_account(&mut b, None).await;

    // Neither the logged-in ID nor the pre-login one gives alice any more.
    for old in [&alice_id, &anonymous_id] {
        let mut replay = Browser::new(&proxy);
        replay.plant(SG, old);
        assert_eq!(whoami(&mut replay).await, "anonymous", "old {SG} {old}");
        stack.assert_account(&mut replay, None).await;
    }
}

async fn failed_login_stays_anonymous(stack: Stack) {
    let (_app, proxy) = start(stack).await;
    let mut b = Browser::new(&proxy);
    let r = b.get("/").await;
    assert_eq!(r.text().trim(), "Hello, anonymous");
    let before = sg(&b);

    let r = login(&mut b, "/login", "alice", "not-the-password").await;
    stack.assert_login_failed(&r);
    assert_eq!(sg(&b), before, "a failed login must not rotate {SG}");
    assert_only_sg(stack, &b);
    assert_eq!(whoami(&mut b).await, "anonymous");
    stack.assert_account(&mut b, None).await;

    // An unknown user fails the same way; a correct login afterwards still works.
    let r = login(&mut b, "/login", "eve", "wonderland").await;
    stack.assert_login_failed(&r);
    assert_eq!(sg(&b), before);
    let r = login(&mut b, "/login", "alice", "wonderland").await;
    stack.assert_login_ok(&r, "alice");
    assert_ne!(sg(&b), before);
    assert_eq!(whoami(&mut b).await, "alice");
}

async fn planted_proxy_id_is_worthless_after_login(stack: Stack) {
    let (_app, proxy) = start(stack).await;

    let mut attacker = Browser::new(&proxy);
    let r = attacker.get("/").await;
    assert_eq!(r.text().trim(), "Hello, anonymous");
    let planted = sg(&attacker);

    let mut victim = Browser::new(&proxy);
    victim.plant(SG, &planted);
    assert_eq!(whoami(&mut victim).await, "anonymous");
    let r = login(&mut victim, "/login", "alice", "wonderland").await;
    stack.assert_login_ok(&r, "alice");
    assert_ne!(
        sg(&victim),
        planted,
        "the login must replace the planted {SG}"
    );
    assert_only_sg(stack, &victim);

    assert_eq!(
        whoami(&mut attacker).await,
        "anonymous",
        "the planted ID must not be alice's session"
    );
    stack.assert_account(&mut attacker, None).await;
    assert_eq!(
        whoami(&mut victim).await,
        "alice",
        "the victim stays logged in"
    );
    stack.assert_account(&mut victim, Some("alice")).await;
}

async fn planted_app_cookie_is_ignored(stack: Stack) {
    let (app, proxy) = start(stack).await;
    let (cookie, id) = (stack.app_cookie(), stack.attacker_id());

    let mut victim = Browser::new(&proxy);
    victim.plant(cookie, id);
    let r = victim.get("/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text().trim(), "Hello, anonymous");
    let r = login(&mut victim, "/login", "alice", "wonderland").await;
    stack.assert_login_ok(&r, "alice");
    assert_eq!(whoami(&mut victim).await, "alice");
    stack.assert_account(&mut victim, Some("alice")).await;

    if stack == Stack::Php {
        assert!(
            !app.php_saw_session_id(id),
            "the planted {cookie}={id} reached the app (sessions: {:?})",
            std::fs::read_dir(app.sessions_dir())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        );
    }
    let mut attacker = Browser::direct(app.addr);
    attacker.plant(cookie, id);
    assert_eq!(
        whoami(&mut attacker).await,
        "anonymous",
        "the planted app cookie must not become alice's app session"
    );
    stack.assert_account(&mut attacker, None).await;
}

// ---------------------------------------------------------------- the tests

/// One module per stack: the shared checks, plus the stack's own.
macro_rules! stack_tests {
    ($module:ident, $stack:expr, { $($extra:item)* }) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            stack_tests!(@each $stack;
                direct_attack_succeeds_without_the_proxy,
                login_logout_through_the_proxy,
                failed_login_stays_anonymous,
                planted_proxy_id_is_worthless_after_login,
                planted_app_cookie_is_ignored);
            $($extra)*
        }
    };
    (@each $stack:expr; $($check:ident),+) => {
        $(
            #[tokio::test]
            async fn $check() {
                super::$check($stack).await;
            }
        )+
    };
}

stack_tests!(php, Stack::Php, {
    #[tokio::test]
    async fn session_id_in_a_form_body_is_stripped() {
        // PHP with use_only_cookies=0 also takes PHPSESSID from a POST field; a
        // cross-site auto-submitted form could use that to fix the victim's app session.
        let (app, proxy) = start(Stack::Php).await;
        let mut victim = Browser::new(&proxy);
        let r = victim
            .post_form(
                "/login",
                &[
                    ("PHPSESSID", "attackerbody1"),
                    ("username", "alice"),
                    ("password", "wonderland"),
                ],
            )
            .await;
        Stack::Php.assert_login_ok(&r, "alice");
        assert_eq!(whoami(&mut victim).await, "alice");
        assert!(
            !app.php_saw_session_id("attackerbody1"),
            "a PHPSESSID form field reached the app"
        );
        let mut attacker = Browser::direct(app.addr);
        attacker.plant("PHPSESSID", "attackerbody1");
        assert_eq!(whoami(&mut attacker).await, "anonymous");
    }

    /// `?PHPSESSID=` in the victim's URLs (the app accepts ids from the URL) never reaches
    /// the app.
    #[tokio::test]
    async fn session_id_in_url_is_stripped() {
        let (app, proxy) = start(Stack::Php).await;
        let mut victim = Browser::new(&proxy);
        let r = victim.get("/?PHPSESSID=attackerurl1").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text().trim(), "Hello, anonymous");
        let r = login(
            &mut victim,
            "/login?PHPSESSID=attackerurl1",
            "alice",
            "wonderland",
        )
        .await;
        Stack::Php.assert_login_ok(&r, "alice");
        let r = victim.get("/whoami?PHPSESSID=attackerurl1").await;
        assert_eq!(r.text().trim(), "alice");
        assert_only_sg(Stack::Php, &victim);

        assert!(
            !app.php_saw_session_id("attackerurl1"),
            "?PHPSESSID=attackerurl1 reached the app"
        );
        let mut attacker = Browser::direct(app.addr);
        attacker.plant("PHPSESSID", "attackerurl1");
        assert_eq!(
            whoami(&mut attacker).await,
            "anonymous",
            "the URL session id must not become alice's app session"
        );
    }
});

stack_tests!(flask, Stack::Flask, {});
