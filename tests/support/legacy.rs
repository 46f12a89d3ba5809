//! A legacy app with the classic fixation flaw, in-process: server-side sessions keyed by
//! the `SID` cookie, a client-chosen ID accepted as-is (from the cookie, the query string
//! or a `;SID=` path parameter, like Tomcat and PHP trans-sid), and no new ID at login.
//!
//! - `GET /whoami` -> the session's user or `anonymous`
//! - `POST /login` (form `username`, `password` = `pw-<username>`) -> 303 to `/home`, or
//!   200 `bad credentials`; header `x-delay-ms` makes any request slow
//! - `POST /logout` -> 200 `bye`, session destroyed
//! - `GET /set?i=N` -> sets cookie `vN`
//! - `GET /echo` -> the Cookie header and the target it received
//! - every response: `x-app-sid`, the app session the request carried (`-` for none)
//! - `GET /events` -> an event stream, no length: `data: <user>` every 100 ms, the session
//!   read again for every event (as long-poll and server-sent-event apps do)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sessiongate::{full_body, Body};

use super::{Browser, Proxy, Reply, Upstream};

/// sessiongate's cookie name in these tests (the default).
pub const SG: &str = "__Host-sg";

pub struct LegacyApp {
    pub up: Upstream,
    pub sessions: Arc<Mutex<HashMap<String, Option<String>>>>,
}

impl LegacyApp {
    pub async fn start() -> LegacyApp {
        let sessions: Arc<Mutex<HashMap<String, Option<String>>>> = Default::default();
        let counter = Arc::new(AtomicU64::new(1));
        let s = sessions.clone();
        let up = Upstream::raw(move |req| handle(req, s.clone(), counter.clone())).await;
        LegacyApp { up, sessions }
    }

    /// A route to this app with session protection: `SID` and `v0`..`v19` vaulted, a
    /// redirect-on-success login rule and a logout rule. `session` goes into `[session]`.
    pub fn route_config(&self, session: &str) -> String {
        let extra: Vec<String> = (0..20).map(|i| format!("\"v{i}\"")).collect();
        format!(
            r#"
[session]
{session}
[[routes]]
upstream = "{up}"
response_timeout = "2s"
[routes.session]
vault = ["SID", {extra}]
[[routes.session.login]]
path = "/login"
success = {{ status = [303], header = {{ name = "location", regex = "^/home$" }} }}
failure = {{ body_contains = "bad credentials" }}
subject = {{ form_field = "username" }}
[[routes.session.logout]]
path = "/logout"
methods = ["POST"]
clear_site_data = true
"#,
            up = self.up.url(),
            extra = extra.join(", ")
        )
    }

    /// Whether the app ever created a session under this ID.
    pub fn saw(&self, sid: &str) -> bool {
        self.sessions.lock().unwrap().contains_key(sid)
    }

    pub fn user_of(&self, sid: &str) -> Option<String> {
        self.sessions.lock().unwrap().get(sid).cloned().flatten()
    }
}

/// The app's session ID as a lax legacy app reads it: the cookie, else `SID` in the
/// query, else a `;SID=` path parameter, else a `SID` field of a form body.
fn sid_from(req: &http::request::Parts, body: &[u8]) -> Option<String> {
    let cookie = req
        .headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.trim().strip_prefix("SID="))
        .map(str::to_owned)
        .next();
    let query = req
        .uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("SID=")))
        .map(str::to_owned);
    let path_param = req
        .uri
        .path()
        .split(';')
        .find_map(|p| p.strip_prefix("SID="))
        .map(|p| p.split('/').next().unwrap_or(p).to_owned());
    let form = form_urlencoded::parse(body)
        .find(|(k, _)| k == "SID")
        .map(|(_, v)| v.into_owned());
    cookie.or(query).or(path_param).or(form)
}

async fn handle(
    req: Request<Incoming>,
    sessions: Arc<Mutex<HashMap<String, Option<String>>>>,
    counter: Arc<AtomicU64>,
) -> Response<Body> {
    if let Some(ms) = req
        .headers()
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut set_cookies = Vec::new();
    let presented = sid_from(&parts, &body);
    let app_sid = presented.clone().unwrap_or_else(|| "-".into());
    let req = Request::from_parts(parts, ());
    let sid = match presented {
        Some(sid) => sid,
        None => {
            let sid = format!("app{}", counter.fetch_add(1, Ordering::SeqCst));
            set_cookies.push(format!("SID={sid}; Path=/; HttpOnly"));
            sid
        }
    };
    // The flaw: whatever ID the client brings becomes a session.
    sessions.lock().unwrap().entry(sid.clone()).or_insert(None);

    let path = req.uri().path().split(';').next().unwrap_or("/").to_owned();
    let target = req.uri().to_string();
    let cookie_header = req
        .headers()
        .get("cookie")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_owned();

    if (method.as_str(), path.as_str()) == ("GET", "/events") {
        return events(sessions, sid);
    }
    let (status, location, text) = match (method.as_str(), path.as_str()) {
        ("GET", "/whoami") => {
            let user = sessions.lock().unwrap().get(&sid).cloned().flatten();
            (200, None, user.unwrap_or_else(|| "anonymous".into()))
        }
        // The same, from an app that re-sends its session cookie on every response
        // (PHP, express-session with `rolling`, Django's SESSION_SAVE_EVERY_REQUEST).
        ("GET", "/whoami-rolling") => {
            set_cookies.push(format!("SID={sid}; Path=/; HttpOnly"));
            let user = sessions.lock().unwrap().get(&sid).cloned().flatten();
            (200, None, user.unwrap_or_else(|| "anonymous".into()))
        }
        ("POST", "/login") => {
            let form: HashMap<String, String> =
                form_urlencoded::parse(&body).into_owned().collect();
            let user = form.get("username").cloned().unwrap_or_default();
            if !user.is_empty() && form.get("password") == Some(&format!("pw-{user}")) {
                sessions.lock().unwrap().insert(sid.clone(), Some(user));
                (303, Some("/home"), String::new())
            } else {
                (200, None, "bad credentials".into())
            }
        }
        // A privilege change ("sudo mode"): the signed-in user's password again makes the
        // session an administrator's, in the same app session (the flaw again).
        ("POST", "/sudo") => {
            let form: HashMap<String, String> =
                form_urlencoded::parse(&body).into_owned().collect();
            let mut sessions = sessions.lock().unwrap();
            match sessions.get(&sid).cloned().flatten() {
                Some(user) if form.get("password") == Some(&format!("pw-{user}")) => {
                    sessions.insert(sid.clone(), Some(format!("{user}+admin")));
                    (200, None, "elevated".into())
                }
                _ => (403, None, "denied".into()),
            }
        }
        ("POST", "/logout") => {
            sessions.lock().unwrap().remove(&sid);
            (200, None, "bye".into())
        }
        ("GET", "/set") => {
            let i = query.strip_prefix("i=").unwrap_or("0").to_owned();
            set_cookies.push(format!("v{i}=value{i}; Path=/"));
            (200, None, format!("set v{i}"))
        }
        ("GET", "/echo") => (200, None, format!("{cookie_header}\n{target}")),
        _ => (200, None, format!("page {path}")),
    };
    // Which app session the request carried (`-`: none), for clients that must see
    // whether a vault was forwarded (the Firestore bench).
    let mut b = Response::builder()
        .status(status)
        .header("x-app-sid", app_sid);
    if let Some(l) = location {
        b = b.header("location", l);
    }
    for c in set_cookies {
        b = b.header("set-cookie", c);
    }
    b.body(full_body(text)).unwrap()
}

fn events(sessions: Arc<Mutex<HashMap<String, Option<String>>>>, sid: String) -> Response<Body> {
    let ticks = futures_util::stream::unfold(0u32, move |n| {
        let sessions = sessions.clone();
        let sid = sid.clone();
        async move {
            if n >= 100 {
                return None;
            }
            if n > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let user = sessions.lock().unwrap().get(&sid).cloned().flatten();
            let line = format!("data: {}\n\n", user.as_deref().unwrap_or("anonymous"));
            Some((
                Ok::<_, sessiongate::BoxError>(hyper::body::Frame::data(bytes::Bytes::from(line))),
                n + 1,
            ))
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(http_body_util::StreamBody::new(ticks).boxed())
        .unwrap()
}

pub async fn login(b: &mut Browser, user: &str) -> Reply {
    b.post_form(
        "/login",
        &[("username", user), ("password", &format!("pw-{user}"))],
    )
    .await
}

pub async fn whoami(b: &mut Browser) -> String {
    let r = b.get("/whoami").await;
    assert_eq!(r.status, 200, "{r:?}");
    r.text()
}

pub fn sg(b: &Browser) -> String {
    b.cookie(SG)
        .expect("the browser holds no sessiongate cookie")
        .to_owned()
}

/// A second browser holding the same sessiongate cookie (a planted or stolen ID).
pub fn holding(proxy: &Proxy, id: &str) -> Browser {
    let mut b = Browser::new(proxy);
    b.plant(SG, id);
    b
}
