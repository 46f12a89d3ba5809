//! End-to-end stacks: real, unchanged, session-fixation-vulnerable apps from other
//! ecosystems behind the proxy.
//!
//! * PHP's built-in server with native sessions (`PHPSESSID`), strict mode off and ids
//!   accepted from the URL (`tests/apps/php/index.php`): login answers 302 to /account.
//! * A Flask app with a hand-rolled server-side session store keyed by a `sid` cookie
//!   (`tests/apps/flask_app.py`): login answers 200 "Welcome back, <user>".
//!
//! * Express 5 + express-session (`tests/apps/express/`): login answers 302.
//! * Django 5.2 with cache-backed sessions (`tests/apps/django_app/`): 200 "Welcome back".
//! * Flask-Session + Flask-Login (`tests/apps/flask_login_app.py`): 302.
//! * Tomcat 10.1, JSPs (`tests/apps/tomcat/`), `JSESSIONID` and `;jsessionid=`: 302.
//!
//! Express, Django, Flask-Session and Tomcat never adopt an ID they did not issue, so their
//! attacker harvests a valid one with a first visit. Each stack first shows the fixation
//! attack working straight against the app, then that it fails through sessiongate; each
//! class of parser disagreement (cookie and parameter spellings, path and method variants,
//! requests in flight, shared routes) is shown working directly first where it applies.
//! `tests/run-all.sh` installs every stack (`tests/apps/setup.sh`). The interpreters come from `SESSIONGATE_E2E_PHP` and
//! `SESSIONGATE_E2E_PYTHON` (set by `tests/run-all.sh`, which installs them); a missing
//! interpreter fails the test, it is never skipped.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Request;
use sessiongate::full_body;
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
    Express,
    Django,
    FlaskLogin,
    Tomcat,
}

impl Stack {
    /// The app's own session cookie, which sessiongate vaults.
    fn app_cookie(self) -> &'static str {
        match self {
            Stack::Php => "PHPSESSID",
            Stack::Flask => "sid",
            Stack::Express => "connect.sid",
            Stack::Django => "sessionid",
            Stack::FlaskLogin => "session",
            Stack::Tomcat => "JSESSIONID",
        }
    }

    /// The login answers 302 to /account (else 200 "Welcome back, <user>").
    fn redirects_on_login(self) -> bool {
        matches!(
            self,
            Stack::Php | Stack::Express | Stack::FlaskLogin | Stack::Tomcat
        )
    }

    fn failure_text(self) -> &'static str {
        match self {
            Stack::Php | Stack::Express | Stack::Tomcat => "Invalid credentials",
            Stack::Flask | Stack::Django | Stack::FlaskLogin => "Login failed",
        }
    }

    /// The session id an attacker plants in the victim's browser: one they chose, or,
    /// for an app that only accepts ids it issued, one harvested with a first visit.
    async fn attacker_id(self, app: &App) -> String {
        match self {
            Stack::Php => "attackerchosen123".to_owned(),
            Stack::Flask => "attackerchosen".to_owned(),
            _ => {
                let mut attacker = Browser::direct(app.addr);
                let r = attacker.get("/").await;
                assert_eq!(r.status, 200, "harvesting visit: {r:?}");
                attacker
                    .cookie(self.app_cookie())
                    .unwrap_or_else(|| panic!("{self:?} set no {}: {r:?}", self.app_cookie()))
                    .to_owned()
            }
        }
    }

    /// The session id a cookie value stands for (`/sid` answers with it): express-session
    /// signs its cookie as `s:<id>.<signature>`.
    fn session_of(self, cookie_value: &str) -> String {
        match self {
            Stack::Express => cookie_value
                .strip_prefix("s%3A")
                .and_then(|v| v.split('.').next())
                .unwrap_or(cookie_value)
                .to_owned(),
            _ => cookie_value.to_owned(),
        }
    }

    fn login_criteria(self) -> String {
        if self.redirects_on_login() {
            format!(
                r#"success = {{ status = [302], header = {{ name = "location", regex = "^/account" }} }}
failure = {{ body_contains = "{}" }}"#,
                self.failure_text()
            )
        } else {
            format!(
                r#"success = {{ status = [200], body_contains = "Welcome back" }}
failure = {{ body_contains = "{}" }}"#,
                self.failure_text()
            )
        }
    }

    /// The sessiongate config (besides `[server]` and `[tls]`) for this stack's app.
    fn config(self, app: &App) -> String {
        self.config_with(app, "/login")
    }

    /// The config with the login rule on `login_path` (a path the app does not use
    /// leaves only `credential_fields` to find the login).
    fn config_with(self, app: &App, login_path: &str) -> String {
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
path = "{login_path}"
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
        if self.redirects_on_login() {
            assert_eq!(
                r.status, 302,
                "{self:?} login of {user} should redirect: {r:?}"
            );
            let to = r.headers.get("location").map(|v| v.to_str().unwrap());
            assert!(
                to.is_some_and(|l| l.starts_with("/account")),
                "{self:?} login should redirect to /account: {r:?}"
            );
        } else {
            assert_eq!(r.status, 200, "{self:?} login of {user}: {r:?}");
            assert_eq!(r.text().trim(), format!("Welcome back, {user}"));
        }
    }

    fn assert_login_failed(self, r: &Reply) {
        assert_eq!(
            r.status, 200,
            "a failed login answers 200 on every stack: {r:?}"
        );
        let text = r.text();
        assert!(text.contains(self.failure_text()), "{self:?}: {text:?}");
    }

    fn assert_logout_ok(self, r: &Reply) {
        match self {
            Stack::Php | Stack::Express | Stack::Tomcat => {
                assert_eq!(r.status, 302, "{self:?} logout: {r:?}");
                assert_eq!(r.headers.get("location").unwrap(), "/");
            }
            Stack::Flask | Stack::Django | Stack::FlaskLogin => {
                assert_eq!(r.status, 200, "{self:?} logout: {r:?}");
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
            (None, _) => {
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
        App::start_with(stack, &[]).await
    }

    /// With extra interpreter arguments (PHP: `-d` settings).
    async fn start_with(stack: Stack, extra: &[&str]) -> App {
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
                        // `;` separates query and form fields too (a common legacy setting).
                        "-d".into(),
                        "arg_separator.input=;&".into(),
                    ]
                    .into_iter()
                    .chain(extra.iter().map(|e| (*e).to_owned()))
                    .chain([docroot.join("index.php").display().to_string()])
                    .collect(),
                )
            }
            Stack::Flask | Stack::Django | Stack::FlaskLogin => {
                let venv = root.join("target/e2e-venv/bin/python");
                let script = match stack {
                    Stack::Flask => apps.join("flask_app.py"),
                    Stack::Django => apps.join("django_app/app.py"),
                    _ => apps.join("flask_login_app.py"),
                };
                let mut args = vec![script.display().to_string(), port.to_string()];
                if stack == Stack::FlaskLogin {
                    args.push(dir.path().join("flask-sessions").display().to_string());
                }
                args.extend(extra.iter().map(|e| (*e).to_owned()));
                (
                    interpreter("SESSIONGATE_E2E_PYTHON", &venv.display().to_string()),
                    args,
                )
            }
            Stack::Express => (
                interpreter("SESSIONGATE_E2E_NODE", "node"),
                vec![
                    apps.join("express/server.js").display().to_string(),
                    port.to_string(),
                ],
            ),
            Stack::Tomcat => (
                "sh".to_owned(),
                vec![
                    apps.join("tomcat/run.sh").display().to_string(),
                    port.to_string(),
                    dir.path().join("catalina-base").display().to_string(),
                ],
            ),
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
        // Tomcat compiles its JSPs before it listens: allow for a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(60);
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
                    "the {:?} app did not listen on {} within 60 s\n--- app log ---\n{}",
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
    let cookie = stack.app_cookie();
    let id = stack.attacker_id(&app).await;
    let id = id.as_str();

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

    // The app session the logged-in ID runs on, as the app sees it.
    let app_sid = b.get("/sid").await.text().trim().to_owned();
    assert!(
        !app_sid.is_empty() && app_sid != "-",
        "no app session: {app_sid:?}"
    );
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
    // The app destroyed its session at logout, so "anonymous" alone proves little: the
    // replay must not run on that app session either (PHP and the Flask app would revive
    // it under the same id if sessiongate still sent the vaulted cookie).
    for old in [&alice_id, &anonymous_id] {
        let mut replay = Browser::new(&proxy);
        replay.plant(SG, old);
        assert_eq!(whoami(&mut replay).await, "anonymous", "old {SG} {old}");
        stack.assert_account(&mut replay, None).await;
        let mut replay = Browser::new(&proxy);
        replay.plant(SG, old);
        let sid = replay.get("/sid").await.text().trim().to_owned();
        assert_ne!(
            sid, app_sid,
            "a replayed {SG} still ran on the logged-out app session"
        );
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
    let cookie = stack.app_cookie();
    let id = stack.attacker_id(&app).await;
    let id = id.as_str();

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

// ---------------------------------------------------------------- parser disagreements

/// A request the app routes to its login handler, spelled differently.
struct Variant {
    method: &'static str,
    target: &'static str,
    /// `None`: the usual urlencoded form; `Some("multipart")`: the same fields as
    /// multipart/form-data; `Some("empty")`: no body (credentials in the target).
    body: Option<&'static str>,
}

const fn v(method: &'static str, target: &'static str) -> Variant {
    Variant {
        method,
        target,
        body: None,
    }
}

impl Stack {
    /// The variants that log alice in on this stack, measured against the real servers.
    fn login_variants(self) -> Vec<Variant> {
        let multipart = Variant {
            method: "POST",
            target: "/login",
            body: Some("multipart"),
        };
        match self {
            Stack::Express => vec![
                v("POST", "/Login"),
                v("POST", "/LOGIN"),
                v("POST", "/login/"),
            ],
            Stack::Django | Stack::Flask | Stack::FlaskLogin => {
                vec![
                    v("POST", "//login"),
                    v("POST", "/l%6Fgin"),
                    v("post", "/login"),
                    multipart,
                ]
            }
            Stack::Tomcat => vec![
                v("POST", "//login"),
                v("POST", "/l%6Fgin"),
                v("POST", "/login;x=y"),
                v("POST", "/./login"),
                v("POST", "/x/../login"),
                v("POST", "/x/..;/login"),
                Variant {
                    method: "POST",
                    target: "/login?username=alice&password=wonderland",
                    body: Some("empty"),
                },
            ],
            Stack::Php => vec![multipart],
        }
    }
}

async fn send_variant(b: &mut Browser, variant: &Variant) -> Reply {
    let builder = Request::builder()
        .method(http::Method::from_bytes(variant.method.as_bytes()).unwrap())
        .uri(variant.target);
    let req = match variant.body {
        None => builder
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full_body("username=alice&password=wonderland")),
        Some("multipart") => builder
            .header("content-type", "multipart/form-data; boundary=XyZ")
            .body(full_body(
                "--XyZ\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\nalice\r\n\
                 --XyZ\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\nwonderland\r\n--XyZ--\r\n",
            )),
        Some(_) => builder.header("content-length", "0").body(full_body("")),
    };
    b.send(req.unwrap()).await
}

/// Class 3: every spelling of the login request the app routes to its login handler logs
/// in directly, and through sessiongate it rotates the ID (or is refused).
async fn login_variants_rotate(stack: Stack) {
    let (app, proxy) = start(stack).await;
    for variant in stack.login_variants() {
        let what = format!("{} {} ({:?})", variant.method, variant.target, variant.body);
        // Directly: the variant logs in the session the attacker planted.
        let id = stack.attacker_id(&app).await;
        let mut victim = Browser::direct(app.addr);
        victim.plant(stack.app_cookie(), &id);
        send_variant(&mut victim, &variant).await;
        let mut attacker = Browser::direct(app.addr);
        attacker.plant(stack.app_cookie(), &id);
        assert_eq!(
            whoami(&mut attacker).await,
            "alice",
            "{what} should log in directly"
        );

        // Through sessiongate: the planted ID is worthless afterwards.
        let mut attacker = Browser::new(&proxy);
        attacker.get("/").await;
        let planted = sg(&attacker);
        let mut victim = Browser::new(&proxy);
        victim.plant(SG, &planted);
        let r = send_variant(&mut victim, &variant).await;
        assert!(r.status.as_u16() < 500, "{what}: {r:?}");
        assert_eq!(
            whoami(&mut attacker).await,
            "anonymous",
            "{what}: the planted ID became alice's"
        );
        if r.status != 400 {
            assert_ne!(
                victim.cookie(SG),
                Some(planted.as_str()),
                "{what} must rotate {SG}"
            );
            assert_eq!(
                whoami(&mut victim).await,
                "alice",
                "{what}: the victim is logged in"
            );
        }
    }
}

/// Class 1 on every stack: spellings of the app's cookie that its parser still reads as
/// that cookie (whitespace around `=`, a quoted value) are shown read directly, and never
/// reach the app through sessiongate.
async fn cookie_spellings_are_dropped(stack: Stack) {
    let (app, proxy) = start(stack).await;
    let name = stack.app_cookie();
    let mut read_directly = 0;
    for spelling in ["{n} ={v}", "{n}= {v}", "{n}=\"{v}\"", " {n}={v} "] {
        let id = stack.attacker_id(&app).await;
        let sid = stack.session_of(&id);
        let line = spelling.replace("{n}", name).replace("{v}", &id);
        let make = |line: &str| {
            Request::get("/sid")
                .header("cookie", http::HeaderValue::from_str(line).unwrap())
                .body(full_body(""))
                .unwrap()
        };
        if Browser::direct(app.addr)
            .send(make(&line))
            .await
            .text()
            .trim()
            == sid
        {
            read_directly += 1;
        }
        let mut victim = Browser::new(&proxy);
        victim.get("/").await;
        let with_sg = format!("{SG}={}; {line}", sg(&victim));
        let r = Browser::new(&proxy).send(make(&with_sg)).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_ne!(
            r.text().trim(),
            sid,
            "{stack:?}: {line:?} reached the app as {name}"
        );
    }
    // PHP mangles `PHPSESSID ` into `PHPSESSID_` and keeps quotes: its spellings are
    // in `php::mangled_cookie_names_are_dropped`.
    if stack != Stack::Php {
        assert!(
            read_directly > 0,
            "{stack:?} read none of the spellings: the test shows nothing"
        );
    }
}

/// A login sent where no rule looks (the rule names another path): its `password` field
/// alone makes it a login attempt, and the ID rotates.
async fn credential_fields_catch_unnamed_logins(stack: Stack) {
    let app = within("starting the app", App::start(stack)).await;
    let proxy = Proxy::start(&stack.config_with(&app, "/not-the-login-path")).await;
    let mut attacker = Browser::new(&proxy);
    attacker.get("/").await;
    let planted = sg(&attacker);
    let mut victim = Browser::new(&proxy);
    victim.plant(SG, &planted);
    stack.assert_login_ok(
        &login(&mut victim, "/login", "alice", "wonderland").await,
        "alice",
    );
    assert_ne!(
        victim.cookie(SG),
        Some(planted.as_str()),
        "a credential field must rotate {SG}"
    );
    assert_eq!(whoami(&mut victim).await, "alice");
    assert_eq!(whoami(&mut attacker).await, "anonymous");
}

/// Class 5: a plain route in front of the same app filters the vaulted cookie both ways.
async fn plain_route_to_the_same_app_filters_the_vault(stack: Stack) {
    let app = within("starting the app", App::start(stack)).await;
    let id = stack.attacker_id(&app).await;
    let mut direct = Browser::direct(app.addr);
    direct.plant(stack.app_cookie(), &id);
    let sid = stack.session_of(&id);
    assert_eq!(
        direct.get("/sid").await.text().trim(),
        sid,
        "directly, /sid runs on the planted id"
    );

    let config = format!(
        "{}\n[[routes]]\nname = \"plain\"\npath_prefix = \"/sid\"\nupstream = \"http://{}\"\n",
        stack.config(&app),
        app.addr
    );
    let proxy = Proxy::start(&config).await;
    let mut victim = Browser::new(&proxy);
    victim.plant(stack.app_cookie(), &id);
    let r = victim.get("/sid").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(
        r.text().trim(),
        sid,
        "the planted app cookie reached the app on a plain route"
    );
    assert!(
        victim.cookie(stack.app_cookie()).is_none_or(|v| v == id),
        "the app's session cookie reached the browser on a plain route: {:?}",
        victim.jar
    );
    assert!(
        r.set_cookies()
            .iter()
            .all(|c| !c.starts_with(stack.app_cookie())),
        "{r:?}"
    );
}

/// Class 4: a request held open with the planted ID across the victim's login is never
/// answered with the victim's session.
async fn request_in_flight_across_the_login(stack: Stack) {
    let (_app, proxy) = start(stack).await;
    let mut attacker = Browser::new(&proxy);
    attacker.get("/").await;
    let planted = sg(&attacker);

    // The attacker's request: its head is in, its body trickles.
    let (tx, body) = channel_body();
    let req = Request::get("/whoami")
        .header("host", "localhost")
        .header("cookie", format!("{SG}={planted}"))
        .header("content-type", "application/octet-stream")
        .header("content-length", "10")
        .body(body)
        .unwrap();
    let mut h1 = proxy.h1().await;
    let held = tokio::spawn(async move { h1.send(req).await });
    tx.send(bytes::Bytes::from_static(b"12345")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut victim = Browser::new(&proxy);
    victim.plant(SG, &planted);
    let started = Instant::now();
    stack.assert_login_ok(
        &login(&mut victim, "/login", "alice", "wonderland").await,
        "alice",
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the login waited too long"
    );
    let _ = tx.send(bytes::Bytes::from_static(b"67890")).await;
    let r = within("the held request", held).await.unwrap();
    assert!(
        !r.text().contains("alice"),
        "the held request was answered as alice: {r:?}"
    );
    assert_eq!(r.status, 409, "cancelled by the login: {r:?}");
    assert_eq!(whoami(&mut victim).await, "alice");
}

// ---------------------------------------------------------------- the tests

// ---------------------------------------------------------------- sessiongate probe

fn probe_options(app: &App, good: &str, bad: &str) -> sessiongate::tools::probe::ProbeOptions {
    sessiongate::tools::probe::ProbeOptions {
        app: format!("http://{}", app.addr),
        login_path: "/login".into(),
        login_page: None,
        user_field: "username".into(),
        pass_field: "password".into(),
        good: ("alice".into(), good.into()),
        bad: ("alice".into(), bad.into()),
        logout_path: Some("/logout".into()),
        check: None,
    }
}

async fn probe(
    opts: &sessiongate::tools::probe::ProbeOptions,
) -> Result<sessiongate::tools::probe::ProbeReport, sessiongate::tools::probe::ProbeError> {
    // JSP pages compile on their first request: a minute for the whole probe.
    tokio::time::timeout(
        Duration::from_secs(60),
        sessiongate::tools::probe::run(opts),
    )
    .await
    .expect("the probe took over a minute")
}

/// `sessiongate probe` against the app itself: it finds the flaw, the session cookie and
/// the login's signals, proposes the config `config_with` writes by hand, and the attack
/// through an in-process sessiongate with that config is blocked.
async fn probe_finds_the_flaw_and_a_config_that_blocks_it(stack: Stack) {
    let app = within("starting the app", App::start(stack)).await;
    let report = probe(&probe_options(&app, "wonderland", "wrong-password"))
        .await
        .unwrap_or_else(|e| panic!("{stack:?}: {e}"));
    assert!(report.vulnerable(), "{stack:?}:\n{report}");
    assert!(
        report.keeps_id_across_login && report.planted_id_signed_in,
        "{stack:?}:\n{report}"
    );
    assert_eq!(
        report.accepts_client_id,
        Some(matches!(stack, Stack::Php | Stack::Flask)),
        "{stack:?}:\n{report}"
    );
    assert_eq!(
        !report.ids_in_pages.is_empty(),
        matches!(stack, Stack::Php | Stack::Tomcat),
        "{stack:?}:\n{report}"
    );
    assert_eq!(report.vault, [stack.app_cookie()], "{stack:?}:\n{report}");
    // The criteria `config_with` writes by hand, but for the Location pattern, which the
    // probe writes stricter (that path exactly, relative or absolute).
    let expected = stack.login_criteria().replace(
        r#"regex = "^/account""#,
        r#"regex = "^(https?://[^/]+)?/account/?([?;#]|$)""#,
    );
    for line in expected.lines() {
        assert!(
            report.proposal.contains(line),
            "{stack:?}: {line:?} missing from the proposal:\n{report}"
        );
    }
    assert!(report.blocked, "{stack:?}:\n{report}");
    assert!(
        report.to_string().contains("=> BLOCKED"),
        "{stack:?}:\n{report}"
    );
}

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
                planted_app_cookie_is_ignored,
                login_variants_rotate,
                credential_fields_catch_unnamed_logins,
                plain_route_to_the_same_app_filters_the_vault,
                cookie_spellings_are_dropped,
                probe_finds_the_flaw_and_a_config_that_blocks_it);
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
    /// Class 4, where it bites: PHP reads the whole body before the script runs, so a
    /// request held open across the login would run as alice.
    #[tokio::test]
    async fn request_in_flight_across_the_login() {
        super::request_in_flight_across_the_login(Stack::Php).await;
    }

    /// Class 2: query and form field names PHP reads as `PHPSESSID` (leading space or `+`,
    /// cut at NUL, `;` as a separator, a multipart part).
    #[tokio::test]
    async fn parameter_spellings_are_removed() {
        let (app, proxy) = start(Stack::Php).await;
        let cases: [(&str, &str); 5] = [
            ("sp1", "/whoami?%20PHPSESSID=attackersp1"),
            ("pl1", "/whoami?+PHPSESSID=attackerpl1"),
            ("nul1", "/whoami?PHPSESSID%00junk=attackernul1"),
            ("semi1", "/whoami?a=1;PHPSESSID=attackersemi1"),
            ("multi1", "/whoami"),
        ];
        for (tag, target) in cases {
            let id = format!("attacker{tag}");
            let make = || {
                let req = if tag == "multi1" {
                    Request::post(target)
                        .header("content-type", "multipart/form-data; boundary=B")
                        .body(full_body(format!(
                            "--B\r\nContent-Disposition: form-data; name=\"PHPSESSID\"\r\n\r\n{id}\r\n--B--\r\n"
                        )))
                } else {
                    Request::get(target).body(full_body(""))
                };
                req.unwrap()
            };
            Browser::direct(app.addr).send(make()).await;
            assert!(
                app.php_saw_session_id(&id),
                "{target}: PHP should read it directly"
            );
            std::fs::remove_file(app.sessions_dir().join(format!("sess_{id}"))).unwrap();
            let r = Browser::new(&proxy).send(make()).await;
            assert!(r.status.as_u16() < 500, "{r:?}");
            assert!(!app.php_saw_session_id(&id), "{target} ({tag}) reached PHP");
        }
    }

    /// PHP takes the first `boundary` substring of Content-Type (`rfc1867.c`), multer the
    /// `boundary=` parameter: parts hidden in a field's value become real to PHP. The
    /// body sessiongate forwards is re-encoded under a boundary of its own, in its own
    /// Content-Type.
    #[tokio::test]
    async fn a_second_multipart_boundary_hides_nothing() {
        let (app, proxy) = start(Stack::Php).await;
        let body = "--real\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n\
                    --zzz\r\nContent-Disposition: form-data; name=\"PHPSESSID\"\r\n\r\nattackerboundary1\r\n\
                    --zzz--\r\n--real--\r\n";
        let make = || {
            Request::post("/whoami")
                .header(
                    "content-type",
                    "multipart/form-data; xboundary=zzz; boundary=real",
                )
                .body(full_body(body))
                .unwrap()
        };
        Browser::direct(app.addr).send(make()).await;
        assert!(
            app.php_saw_session_id("attackerboundary1"),
            "PHP should read the hidden part directly"
        );
        std::fs::remove_file(app.sessions_dir().join("sess_attackerboundary1")).unwrap();
        let r = Browser::new(&proxy).send(make()).await;
        assert!(r.status.as_u16() < 500, "{r:?}");
        assert!(
            !app.php_saw_session_id("attackerboundary1"),
            "the hidden part reached PHP"
        );
    }

    /// Class 1: with `session.name=my_sid`, PHP reads `my.sid`, `my sid` and `my[sid` as
    /// `my_sid`.
    #[tokio::test]
    async fn mangled_cookie_names_are_dropped() {
        let app = within(
            "starting the app",
            App::start_with(Stack::Php, &["-d", "session.name=my_sid"]),
        )
        .await;
        let proxy = Proxy::start(
            &Stack::Php
                .config(&app)
                .replace("\"PHPSESSID\"", "\"my_sid\""),
        )
        .await;
        for (i, name) in ["my.sid", "my sid", "my[sid", "my%2Esid"]
            .into_iter()
            .enumerate()
        {
            let id = format!("attackermangled{i}");
            let line = format!("{name}={id}");
            let make = |line: &str| {
                Request::get("/whoami")
                    .header(
                        "cookie",
                        http::HeaderValue::from_bytes(line.as_bytes()).unwrap(),
                    )
                    .body(full_body(""))
                    .unwrap()
            };
            Browser::direct(app.addr).send(make(&line)).await;
            let direct = app.php_saw_session_id(&id);
            if name != "my%2Esid" {
                assert!(direct, "PHP should read {name:?} as my_sid");
            }
            let _ = std::fs::remove_file(app.sessions_dir().join(format!("sess_{id}")));
            let r = Browser::new(&proxy).send(make(&line)).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert!(
                !app.php_saw_session_id(&id),
                "{name:?} reached PHP as my_sid"
            );
        }
    }

    #[tokio::test]
    async fn session_id_in_a_form_body_is_stripped() {
        // PHP with use_only_cookies=0 also takes PHPSESSID from a POST field; a
        // cross-site auto-submitted form could use that to fix the victim's app session.
        let (app, proxy) = start(Stack::Php).await;
        // Directly, the field fixes the session: the attacker then rides alice's login.
        let mut direct = Browser::direct(app.addr);
        let r = direct
            .post_form(
                "/login",
                &[
                    ("PHPSESSID", "attackerbody0"),
                    ("username", "alice"),
                    ("password", "wonderland"),
                ],
            )
            .await;
        Stack::Php.assert_login_ok(&r, "alice");
        let mut attacker = Browser::direct(app.addr);
        attacker.plant("PHPSESSID", "attackerbody0");
        assert_eq!(
            whoami(&mut attacker).await,
            "alice",
            "the POST-field attack should work directly"
        );

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

stack_tests!(flask, Stack::Flask, {
    /// The same app doing it right (a new ID at login): the probe says so.
    #[tokio::test]
    async fn probe_tells_an_app_that_rotates() {
        let app = within(
            "starting the app",
            App::start_with(Stack::Flask, &["--rotate"]),
        )
        .await;
        let report = probe(&probe_options(&app, "wonderland", "wrong-password"))
            .await
            .unwrap();
        assert!(!report.vulnerable(), "{report}");
        assert!(
            !report.keeps_id_across_login && !report.planted_id_signed_in,
            "{report}"
        );
        assert!(
            report
                .to_string()
                .contains("gives a new session ID at login"),
            "{report}"
        );
        assert!(report.blocked, "{report}");
    }

    /// What the probe cannot work with is said plainly.
    #[tokio::test]
    async fn probe_errors_are_clear() {
        use sessiongate::tools::probe::ProbeError;
        let app = within("starting the app", App::start(Stack::Flask)).await;
        let same = probe(&probe_options(&app, "wrong-password", "wrong-password")).await;
        assert!(
            matches!(same, Err(ProbeError::Indistinguishable(_))),
            "{same:?}"
        );
        let mut nowhere = probe_options(&app, "wonderland", "wrong-password");
        nowhere.login_path = "/signin".into();
        let err = probe(&nowhere).await.err().unwrap();
        assert!(
            matches!(err, ProbeError::NoLoginForm { status: 404, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("--login-path"), "{err}");
        let mut closed = probe_options(&app, "wonderland", "wrong-password");
        closed.app = format!("http://127.0.0.1:{}", free_port());
        let err = probe(&closed).await.err().unwrap();
        assert!(matches!(err, ProbeError::Unreachable { .. }), "{err:?}");
    }

    /// The command an operator runs: its report, and exit status 0 for a blocked attack.
    #[tokio::test]
    async fn probe_command_prints_a_config_to_paste() {
        let app = within("starting the app", App::start(Stack::Flask)).await;
        let url = format!("http://{}", app.addr);
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_sessiongate"))
                .args(["probe", "--app", &url, "--login-path", "/login"])
                .args(["--good", "alice:wonderland", "--bad", "alice:nope"])
                .env("RUST_LOG", "error")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        for want in [
            "VULNERABLE to session fixation",
            "vault = [\"sid\"]",
            "success = { status = [200], body_contains = \"Welcome back\" }",
            "failure = { body_contains = \"Login failed\" }",
            "=> BLOCKED",
        ] {
            assert!(text.contains(want), "{want:?} missing:\n{text}");
        }
    }
});
stack_tests!(express, Stack::Express, {});
stack_tests!(flask_login, Stack::FlaskLogin, {});
stack_tests!(tomcat, Stack::Tomcat, {
    /// `;jsessionid=` (Tomcat's URL session id) with a harvested id: used directly,
    /// removed by sessiongate.
    #[tokio::test]
    async fn jsessionid_path_parameter_is_removed() {
        let (app, proxy) = start(Stack::Tomcat).await;
        let id = Stack::Tomcat.attacker_id(&app).await;
        let mut direct = Browser::direct(app.addr);
        assert_eq!(
            direct
                .get(&format!("/sid;jsessionid={id}"))
                .await
                .text()
                .trim(),
            id
        );
        let mut victim = Browser::new(&proxy);
        let r = victim.get(&format!("/sid;jsessionid={id}")).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_ne!(r.text().trim(), id, "the ;jsessionid= reached Tomcat");

        // URL rewriting: a first-visit login redirects to /account;jsessionid=<id>
        // directly; through sessiongate the browser never reads the app's id.
        let r = login(
            &mut Browser::direct(app.addr),
            "/login",
            "alice",
            "wonderland",
        )
        .await;
        let location = r.headers["location"].to_str().unwrap().to_owned();
        assert!(location.contains(";jsessionid="), "directly: {location}");
        let r = login(&mut Browser::new(&proxy), "/login", "alice", "wonderland").await;
        let location = r.headers["location"].to_str().unwrap().to_owned();
        assert!(
            location.starts_with("/account") && !location.contains("jsessionid"),
            "{location}"
        );
    }
});
stack_tests!(django, Stack::Django, {
    /// Django `str.strip()`s cookie names: a name after a no-break space is `sessionid`.
    /// Django also keeps the last of two equal names.
    #[tokio::test]
    async fn unicode_whitespace_and_last_duplicate_spellings_are_dropped() {
        let (app, proxy) = start(Stack::Django).await;
        let id = Stack::Django.attacker_id(&app).await;
        for line in [
            format!("\u{a0}sessionid={id}"),
            format!("a=1; sessionid=x; sessionid={id}"),
        ] {
            let make = |line: &str| {
                Request::get("/sid")
                    .header(
                        "cookie",
                        http::HeaderValue::from_bytes(line.as_bytes()).unwrap(),
                    )
                    .body(full_body(""))
                    .unwrap()
            };
            let mut direct = Browser::direct(app.addr);
            assert_eq!(
                direct.send(make(&line)).await.text().trim(),
                id,
                "directly: {line:?}"
            );
            let mut victim = Browser::new(&proxy);
            victim.get("/").await;
            let mut line_with_sg = format!("{SG}={}; ", sg(&victim));
            line_with_sg.push_str(&line);
            let r = Browser::new(&proxy).send(make(&line_with_sg)).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_ne!(r.text().trim(), id, "through sessiongate: {line:?}");
        }
    }
});
