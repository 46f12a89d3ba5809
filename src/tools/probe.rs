//! `sessiongate probe`: pointed at the app itself (not through sessiongate), with its login
//! path, form fields and one good and one bad credential, it
//!
//! 1. tells whether the app on its own is open to session fixation: does it adopt a
//!    session ID the client makes up, does it keep the ID it issued across a login (the
//!    attack itself: an ID harvested by one client, planted in another that signs in, is
//!    then tried by the first), does it put session IDs in URLs or pages;
//! 2. finds the cookies that behave like session IDs (set to every visitor, different
//!    for each, stable for one) and proposes them as the `vault`;
//! 3. compares the good and the bad login's answers (status, `Location`, body) and
//!    writes a login rule with success and failure criteria (and a logout rule when a
//!    logout path is given);
//! 4. runs the same attack through an in-process sessiongate configured with that
//!    proposal, and says whether it is blocked.
//!
//! It talks plain HTTP/1.1 (or HTTPS) with one connection per request, follows redirects
//! itself (same origin only), keeps its own cookie jars, and parses login forms with an
//! HTML parser (`scraper`) to send their hidden fields (CSRF tokens) as a browser would.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::cookies::SetCookie;

/// What the operator tells the probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The app's base URL, e.g. `http://127.0.0.1:8000`.
    pub app: String,
    /// Where the login form posts to.
    pub login_path: String,
    /// Where the login form is shown (default: `login_path`).
    pub login_page: Option<String>,
    pub user_field: String,
    pub pass_field: String,
    pub good: (String, String),
    pub bad: (String, String),
    pub logout_path: Option<String>,
    /// A page whose answer differs for a signed-in user (default: where the good login
    /// redirects, else `/`).
    pub check: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0} is not an http:// or https:// URL with a host")]
    BadUrl(String),
    #[error("cannot reach the app at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("{0}")]
    Http(String),
    #[error(
        "cannot find the login form: {page} has no form with the fields {user:?} and {pass:?}, and POST {path} answers {status}; give the path the form posts to with --login-path (and the fields with --user-field / --pass-field)"
    )]
    NoLoginForm {
        page: String,
        path: String,
        user: String,
        pass: String,
        status: u16,
    },
    #[error("the app set no cookie that behaves like a session ID (set to every visitor, different for each): {0}")]
    NoSessionCookie(String),
    #[error("the good and the bad credential got the same answer ({0}): check both credentials (the good one must sign in, the bad one must not), or write the login rule by hand")]
    Indistinguishable(String),
    #[error("the in-process sessiongate would not start with the proposed config: {0}")]
    Verify(String),
}

/// One answer, as the probe saw it.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn location(&self) -> Option<&str> {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
    }

    fn set_cookies(&self) -> Vec<(String, String)> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| SetCookie::parse(v.as_bytes()).ok())
            .map(|c| {
                (
                    String::from_utf8_lossy(c.name).into_owned(),
                    String::from_utf8_lossy(c.value).into_owned(),
                )
            })
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn describe(&self) -> String {
        let mut d = self.status.as_u16().to_string();
        if let Some(l) = self.location() {
            let _ = write!(d, ", Location: {l}");
        }
        let names: Vec<String> = self.set_cookies().into_iter().map(|c| c.0).collect();
        let _ = match names.is_empty() {
            true => write!(d, ", no Set-Cookie"),
            false => write!(d, ", Set-Cookie: {}", names.join(", ")),
        };
        let first = page_text(self)
            .into_iter()
            .next()
            .map(|l| l.chars().take(60).collect::<String>());
        if let Some(line) = first {
            let _ = write!(d, ", body {line:?}");
        }
        d
    }
}

/// A browser of sorts: a cookie jar, one connection per request.
#[derive(Clone)]
struct Client {
    base: Uri,
    connector: HttpsConnector<HttpConnector>,
    jar: BTreeMap<String, String>,
}

const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
const MAX_BODY: usize = 2 * 1024 * 1024;

impl Client {
    fn new(base: &Uri) -> Result<Client, ProbeError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(REQUEST_DEADLINE));
        let tls = crate::tls::upstream_client_config(&[])
            .map_err(|e| ProbeError::Http(format!("TLS client: {e}")))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Client {
            base: base.clone(),
            connector,
            jar: BTreeMap::new(),
        })
    }

    /// The same jar against another origin (sessiongate in front of the app).
    fn towards(&self, base: &Uri) -> Client {
        Client {
            base: base.clone(),
            ..self.clone()
        }
    }

    fn fresh(&self) -> Client {
        Client {
            jar: BTreeMap::new(),
            ..self.clone()
        }
    }

    async fn get(&mut self, path: &str) -> Result<Answer, ProbeError> {
        self.send(Method::GET, path, None).await
    }

    /// One request, no redirect followed; the answer's cookies go into the jar.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        form: Option<&[(String, String)]>,
    ) -> Result<Answer, ProbeError> {
        let unreachable = |why: String| ProbeError::Unreachable {
            url: self.base.to_string(),
            why,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(
                header::HOST,
                self.base.authority().map_or("", |a| a.as_str()),
            )
            .header(header::USER_AGENT, "sessiongate-probe");
        if !self.jar.is_empty() {
            let pairs: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header(header::COOKIE, pairs.join("; "));
        }
        let body = match form {
            Some(fields) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .finish()
            }
            None => String::new(),
        };
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProbeError::Http(format!("cannot build a request for {path}: {e}")))?;
        let exchange = async {
            let io = self
                .connector
                .clone()
                .call(self.base.clone())
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(conn);
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| ProbeError::Http(format!("{path}: {e}")))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| ProbeError::Http(format!("{path}: the body failed: {e}")))?
                .to_bytes();
            Ok::<_, ProbeError>(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let answer = tokio::time::timeout(REQUEST_DEADLINE, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer to {path} within 10 s")))??;
        for line in answer.headers.get_all(header::SET_COOKIE) {
            if let Ok(c) = SetCookie::parse(line.as_bytes()) {
                let name = String::from_utf8_lossy(c.name).into_owned();
                match deletes(&c) {
                    true => self.jar.remove(&name),
                    false => self
                        .jar
                        .insert(name, String::from_utf8_lossy(c.value).into_owned()),
                };
            }
        }
        Ok(answer)
    }

    /// Follows redirects (GET, same origin, at most 5) from `first`; the last answer.
    async fn follow(&mut self, first: Answer) -> Result<Answer, ProbeError> {
        let mut last = first;
        for _ in 0..5 {
            if !last.status.is_redirection() {
                break;
            }
            let Some(to) = last.location().and_then(same_origin_path) else {
                break;
            };
            last = self.get(&to).await?;
        }
        Ok(last)
    }
}

/// A Set-Cookie that removes the cookie (`Max-Age=0` or less, or an empty value with an
/// expiry in the past, as Django sends it).
fn deletes(c: &SetCookie<'_>) -> bool {
    c.attributes.iter().any(|a| {
        a.is("max-age")
            && std::str::from_utf8(a.value)
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .is_some_and(|n| n <= 0)
    }) || (c.value.is_empty() || c.value == b"\"\"") && c.attributes.iter().any(|a| a.is("expires"))
}

/// The path and query of a Location on the same origin (relative, or absolute: the
/// probe only talks to one origin and takes the path).
fn same_origin_path(location: &str) -> Option<String> {
    if location.starts_with('/') && !location.starts_with("//") {
        return Some(location.to_owned());
    }
    let uri: Uri = location.parse().ok()?;
    uri.path_and_query().map(|pq| pq.as_str().to_owned())
}

/// The visible text lines of a page: the text nodes of HTML, or the body's lines.
fn page_text(a: &Answer) -> Vec<String> {
    let text = a.text();
    let is_html = a
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("html"))
        || text.trim_start().starts_with('<');
    let pieces: Vec<String> = match is_html {
        true => scraper::Html::parse_document(&text)
            .root_element()
            .text()
            .map(str::to_owned)
            .collect(),
        false => vec![text],
    };
    pieces
        .iter()
        .flat_map(|p| p.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A login form: where it posts, and its other fields (hidden inputs, CSRF tokens).
#[derive(Debug, Clone, Default)]
struct LoginForm {
    action: Option<String>,
    hidden: Vec<(String, String)>,
}

fn find_form(html: &str, user: &str, pass: &str) -> Option<LoginForm> {
    let doc = scraper::Html::parse_document(html);
    let forms = scraper::Selector::parse("form").ok()?;
    let inputs = scraper::Selector::parse("input").ok()?;
    doc.select(&forms).find_map(|form| {
        let named: Vec<_> = form.select(&inputs).collect();
        let has = |n: &str| named.iter().any(|i| i.value().attr("name") == Some(n));
        if !(has(user) && has(pass)) {
            return None;
        }
        let hidden = named
            .iter()
            .filter(|i| {
                i.value()
                    .attr("type")
                    .is_some_and(|t| t.eq_ignore_ascii_case("hidden"))
            })
            .filter_map(|i| {
                let name = i.value().attr("name")?;
                Some((
                    name.to_owned(),
                    i.value().attr("value").unwrap_or("").to_owned(),
                ))
            })
            .collect();
        Some(LoginForm {
            action: form.value().attr("action").map(str::to_owned),
            hidden,
        })
    })
}

/// The report, section by section (the `Display` is what `sessiongate probe` prints).
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    pub app: String,
    pub notes: Vec<String>,
    /// Cookie name -> what the probe concluded about it.
    pub cookies: Vec<(String, String)>,
    pub vault: Vec<String>,
    pub accepts_client_id: Option<bool>,
    pub keeps_id_across_login: bool,
    pub planted_id_signed_in: bool,
    pub ids_in_pages: Vec<String>,
    pub good: String,
    pub bad: String,
    /// The ready-to-paste `[routes.session]` table and its rules.
    pub proposal: String,
    pub verification: Vec<String>,
    pub blocked: bool,
}

impl ProbeReport {
    pub fn vulnerable(&self) -> bool {
        self.accepts_client_id == Some(true) || self.planted_id_signed_in
    }
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "sessiongate probe of {}\n", self.app)?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        writeln!(f, "1. The app on its own")?;
        let accepts = self.accepts_client_id.map_or("could not tell", yes_no);
        writeln!(
            f,
            "   accepts a session ID the client makes up:   {accepts}"
        )?;
        writeln!(
            f,
            "   keeps the same session ID across login:     {}",
            yes_no(self.keeps_id_across_login)
        )?;
        writeln!(
            f,
            "   an ID planted before the login is signed in: {}",
            yes_no(self.planted_id_signed_in)
        )?;
        match self.ids_in_pages.is_empty() {
            true => writeln!(f, "   session IDs in URLs or pages:                no")?,
            false => writeln!(
                f,
                "   session IDs in URLs or pages:                yes ({})",
                self.ids_in_pages.join("; ")
            )?,
        }
        match self.vulnerable() {
            true => writeln!(f, "   => VULNERABLE to session fixation on its own: put sessiongate in front of it.\n")?,
            false => writeln!(f, "   => the app gives a new session ID at login (not vulnerable on its own); sessiongate still hardens its cookies.\n")?,
        }
        writeln!(f, "2. Cookies the app sets")?;
        for (name, what) in &self.cookies {
            writeln!(f, "   {name:<16} {what}")?;
        }
        writeln!(f, "   proposed vault: {:?}\n", self.vault)?;
        writeln!(f, "3. Login answers")?;
        writeln!(f, "   good credential: {}", self.good)?;
        writeln!(f, "   bad credential:  {}", self.bad)?;
        writeln!(
            f,
            "   proposed config (paste under your [[routes]] entry for the app):\n"
        )?;
        for line in self.proposal.lines() {
            match line.is_empty() {
                true => writeln!(f)?,
                false => writeln!(f, "   {line}")?,
            }
        }
        writeln!(f, "\n4. The attack through sessiongate with this config")?;
        for line in &self.verification {
            writeln!(f, "   {line}")?;
        }
        match self.blocked {
            true => writeln!(f, "   => BLOCKED: the proposed config protects this app."),
            false => writeln!(
                f,
                "   => NOT BLOCKED: the proposed config does not protect this app; see above."
            ),
        }
    }
}

/// Runs the whole probe.
pub async fn run(opts: &ProbeOptions) -> Result<ProbeReport, ProbeError> {
    let base: Uri = opts
        .app
        .trim_end_matches('/')
        .parse()
        .map_err(|_| ProbeError::BadUrl(opts.app.clone()))?;
    if base.host().is_none() || !matches!(base.scheme_str(), Some("http" | "https")) {
        return Err(ProbeError::BadUrl(opts.app.clone()));
    }
    let client = Client::new(&base)?;
    let mut report = ProbeReport {
        app: opts.app.clone(),
        ..ProbeReport::default()
    };
    let login = Login::discover(&client, opts, &mut report).await?;
    let session = find_session_cookies(&client, opts, &login, &mut report).await?;
    let answers = login.compare(&client, &mut report).await?;
    let oracle = Oracle::new(&client, opts, &login, &answers).await?;
    check_the_app(&client, &login, &session, &oracle, &mut report).await?;
    report.proposal = propose(opts, &login, &session, &answers)?;
    verify(&client, opts, &login, &oracle, &answers, &mut report).await?;
    Ok(report)
}

/// How to sign in: where the form is and where it posts.
struct Login {
    page: String,
    post_path: String,
    form: LoginForm,
    user_field: String,
    pass_field: String,
    good: (String, String),
    bad: (String, String),
    /// The cookie-less visit to the login page (for IDs in pages).
    first_visit: Answer,
}

impl Login {
    async fn discover(
        client: &Client,
        opts: &ProbeOptions,
        report: &mut ProbeReport,
    ) -> Result<Login, ProbeError> {
        let page = opts
            .login_page
            .clone()
            .unwrap_or_else(|| opts.login_path.clone());
        let first_visit = client.fresh().get(&page).await?;
        let form = find_form(&first_visit.text(), &opts.user_field, &opts.pass_field);
        let login = Login {
            page: page.clone(),
            post_path: opts.login_path.clone(),
            form: form.clone().unwrap_or_default(),
            user_field: opts.user_field.clone(),
            pass_field: opts.pass_field.clone(),
            good: opts.good.clone(),
            bad: opts.bad.clone(),
            first_visit,
        };
        let action = form
            .as_ref()
            .and_then(|f| f.action.as_deref())
            .and_then(same_origin_path)
            .map(|a| a.split([';', '?']).next().unwrap_or_default().to_owned());
        if let Some(action) = action.filter(|a| !a.is_empty() && *a != login.post_path) {
            report.notes.push(format!(
                "the login form at {page} posts to {action}, not to {}: give --login-path {action} if that is the login",
                login.post_path
            ));
        }
        if form.is_none() {
            // Not fatal: some apps have no login page (an API, a form elsewhere), and the
            // fields are known. Fatal only if nothing answers the post either.
            let probe = login
                .attempt(&mut client.fresh(), &login.bad.clone())
                .await?;
            if matches!(probe.status.as_u16(), 404 | 405) {
                return Err(ProbeError::NoLoginForm {
                    page,
                    path: login.post_path,
                    user: login.user_field,
                    pass: login.pass_field,
                    status: probe.status.as_u16(),
                });
            }
            report.notes.push(format!(
                "no form with the fields {:?} and {:?} at {page} ({}); posting them to {} directly",
                opts.user_field,
                opts.pass_field,
                login.first_visit.status.as_u16(),
                login.post_path
            ));
        }
        Ok(login)
    }

    /// Posts the login form (its hidden fields too, but for session IDs in them) with a
    /// credential, as `client`, without following the answer.
    async fn attempt(
        &self,
        client: &mut Client,
        cred: &(String, String),
    ) -> Result<Answer, ProbeError> {
        let mut fields: Vec<(String, String)> = self
            .form
            .hidden
            .iter()
            .filter(|(k, _)| !client.jar.keys().any(|c| c.eq_ignore_ascii_case(k)))
            .cloned()
            .collect();
        fields.push((self.user_field.clone(), cred.0.clone()));
        fields.push((self.pass_field.clone(), cred.1.clone()));
        client
            .send(Method::POST, &self.post_path, Some(&fields))
            .await
    }

    /// A good and a bad login, each by a client that visited the login page first.
    async fn compare(
        &self,
        client: &Client,
        report: &mut ProbeReport,
    ) -> Result<Answers, ProbeError> {
        let mut g = client.fresh();
        g.get(&self.page).await?;
        let good = self.attempt(&mut g, &self.good).await?;
        let mut b = client.fresh();
        b.get(&self.page).await?;
        let bad = self.attempt(&mut b, &self.bad).await?;
        report.good = good.describe();
        report.bad = bad.describe();
        if good.status == bad.status && good.location() == bad.location() && good.body == bad.body {
            return Err(ProbeError::Indistinguishable(report.good.clone()));
        }
        Ok(Answers { good, bad })
    }
}

struct Answers {
    good: Answer,
    bad: Answer,
}

/// The app's session cookies.
struct SessionCookies {
    names: Vec<String>,
}

async fn find_session_cookies(
    client: &Client,
    opts: &ProbeOptions,
    login: &Login,
    report: &mut ProbeReport,
) -> Result<SessionCookies, ProbeError> {
    // Two visitors, each on the home page then the login page; the first comes back.
    let mut visits = Vec::new();
    for _ in 0..2 {
        let mut v = client.fresh();
        v.get("/").await?;
        v.get(&login.page).await?;
        visits.push(v);
    }
    let mut again = visits[0].clone();
    let before = again.jar.clone();
    again.get(&login.page).await?;
    // Some apps set their session cookie only at login.
    let mut at_login = client.fresh();
    let signed = login.attempt(&mut at_login, &opts.good).await?;
    let mut names: Vec<String> = Vec::new();
    let mut all: Vec<&String> = visits[0].jar.keys().chain(at_login.jar.keys()).collect();
    all.sort();
    all.dedup();
    for name in all {
        let (a, b) = (visits[0].jar.get(name), visits[1].jar.get(name));
        let verdict = match (a, b) {
            (Some(a), Some(b)) if a != b && again.jar.get(name) == before.get(name) => {
                names.push(name.clone());
                "set to every visitor, different for each, stable for one: a session ID -> vault"
                    .to_owned()
            }
            (Some(a), Some(b)) if a == b => "the same for every visitor: not a session ID".into(),
            (Some(_), Some(_)) => "changes on every request: not a session ID (a token?)".into(),
            _ if signed.set_cookies().iter().any(|(n, _)| n == name) => {
                names.push(name.clone());
                "set by the login: treated as a session ID -> vault".into()
            }
            _ => "set to some visitors only: not a session ID".into(),
        };
        report.cookies.push((name.clone(), verdict));
    }
    if names.is_empty() {
        let seen: Vec<&String> = visits[0].jar.keys().collect();
        return Err(ProbeError::NoSessionCookie(match seen.is_empty() {
            true => "it set no cookie at all on / and the login page".into(),
            false => format!("cookies seen: {seen:?}"),
        }));
    }
    report.vault.clone_from(&names);
    Ok(SessionCookies { names })
}

/// Tells a signed-in answer from an anonymous one, on the check page.
struct Oracle {
    path: String,
    anonymous: Answer,
    user: String,
}

impl Oracle {
    async fn new(
        client: &Client,
        opts: &ProbeOptions,
        login: &Login,
        answers: &Answers,
    ) -> Result<Oracle, ProbeError> {
        let path = match &opts.check {
            Some(p) => p.clone(),
            None => answers
                .good
                .location()
                .and_then(same_origin_path)
                .filter(|p| !p.starts_with(&login.post_path))
                .unwrap_or_else(|| "/".to_owned()),
        };
        let anonymous = client.fresh().get(&path).await?;
        Ok(Oracle {
            path,
            anonymous,
            user: login.good.0.clone(),
        })
    }

    /// Whether `client` is signed in as the good user: its answer on the check page shows
    /// the user where an anonymous one does not, or differs from the anonymous one the
    /// way `signed_in` (a client known to be signed in) does.
    async fn signed_in(
        &self,
        client: &mut Client,
        reference: Option<&Answer>,
    ) -> Result<bool, ProbeError> {
        let a = client.get(&self.path).await?;
        let shows = |x: &Answer| x.text().contains(&self.user);
        let like_reference = reference.is_some_and(|r| r.status == a.status && r.body == a.body);
        let unlike_anonymous = a.status != self.anonymous.status || a.body != self.anonymous.body;
        Ok(unlike_anonymous && (like_reference || (shows(&a) && !shows(&self.anonymous))))
    }
}

/// Section 1: the attack on the app itself.
async fn check_the_app(
    client: &Client,
    login: &Login,
    session: &SessionCookies,
    oracle: &Oracle,
    report: &mut ProbeReport,
) -> Result<(), ProbeError> {
    // The attacker harvests IDs; the victim signs in holding them.
    let mut attacker = client.fresh();
    attacker.get("/").await?;
    attacker.get(&login.page).await?;
    let mut victim = client.fresh();
    victim.jar = attacker.jar.clone();
    let first = login.attempt(&mut victim, &login.good).await?;
    let landing = victim.follow(first).await?;
    let reference = victim.get(&oracle.path).await?;
    report.keeps_id_across_login = session
        .names
        .iter()
        .any(|n| attacker.jar.contains_key(n) && victim.jar.get(n) == attacker.jar.get(n));
    report.planted_id_signed_in = oracle.signed_in(&mut attacker, Some(&reference)).await?;
    let _ = landing;

    // Made-up IDs of the same shape as the issued ones.
    let mut chooser = client.fresh();
    for n in &session.names {
        if let Some(issued) = attacker.jar.get(n) {
            chooser.jar.insert(n.clone(), made_up(issued));
        }
    }
    if chooser.jar.is_empty() {
        report.accepts_client_id = None;
    } else {
        let chosen = chooser.jar.clone();
        let mut victim = chooser.clone();
        let first = login.attempt(&mut victim, &login.good).await?;
        victim.follow(first).await?;
        let kept = session
            .names
            .iter()
            .any(|n| chosen.contains_key(n) && victim.jar.get(n) == chosen.get(n));
        report.accepts_client_id =
            Some(kept && oracle.signed_in(&mut chooser, Some(&reference)).await?);
    }
    report.ids_in_pages = ids_in_pages(&login.first_visit, &login.page, &session.names);
    Ok(())
}

/// A value of the same length and alphabet as `issued`, but not it.
fn made_up(issued: &str) -> String {
    issued
        .chars()
        .map(|c| match c {
            'a'..='y' | 'A'..='Y' | '0'..='8' => char::from_u32(u32::from(c) + 1).unwrap_or(c),
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            other => other,
        })
        .collect()
}

/// Where a cookie-less first visit shows a session ID: a URL header, a link, a form.
fn ids_in_pages(first: &Answer, page: &str, names: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let body = first.text().to_ascii_lowercase();
    for n in names {
        let lower = n.to_ascii_lowercase();
        for h in [header::LOCATION, header::CONTENT_LOCATION] {
            if first
                .headers
                .get(&h)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains(&format!("{lower}=")))
            {
                out.push(format!("{n} in the {h} header of {page}"));
            }
        }
        let field = [format!("name=\"{lower}\""), format!("name='{lower}'")];
        if field.iter().any(|f| body.contains(f.as_str())) {
            out.push(format!("{n} in a form field of {page}"));
        }
        let in_url = [
            format!(";{lower}="),
            format!("?{lower}="),
            format!("&{lower}="),
        ];
        if in_url.iter().any(|u| body.contains(u.as_str())) {
            out.push(format!("{n} in a URL in {page}"));
        }
    }
    out
}

/// A line of `a`'s text that `b`'s does not hold, cut before the user's name (so that
/// it holds for every user), at least 4 characters.
fn distinctive(a: &Answer, b: &Answer, user: &str) -> Option<String> {
    let other = b.text();
    page_text(a).into_iter().find_map(|line| {
        let cut = match line.find(user) {
            Some(i) if !user.is_empty() => &line[..i],
            _ => line.as_str(),
        };
        let cut = cut.trim_end_matches(|c: char| !c.is_alphanumeric()).trim();
        (cut.chars().count() >= 4
            && !other.contains(cut)
            && !cut.chars().all(|c| c.is_ascii_digit()))
        .then(|| cut.to_owned())
    })
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Section 3: the `[routes.session]` table with its rules.
fn propose(
    opts: &ProbeOptions,
    login: &Login,
    session: &SessionCookies,
    answers: &Answers,
) -> Result<String, ProbeError> {
    let (good, bad) = (&answers.good, &answers.bad);
    let user = &login.good.0;
    let mut success: Vec<String> = Vec::new();
    let mut failure: Vec<String> = Vec::new();
    if good.status != bad.status {
        success.push(format!("status = [{}]", good.status.as_u16()));
    }
    if let Some(to) = good.location().filter(|l| Some(*l) != bad.location()) {
        // The path only: Tomcat appends `;jsessionid=`, others a query.
        let path = same_origin_path(to).unwrap_or_else(|| to.to_owned());
        let path = path.split([';', '?', '#']).next().unwrap_or("/");
        // That path and no longer one (`/` must not match `/login?error`), relative or
        // absolute (older Werkzeug and Tomcat send absolute URLs).
        let regex = format!(
            "^(https?://[^/]+)?{}/?([?;#]|$)",
            regex::escape(path.trim_end_matches('/'))
        );
        success.push(format!(
            "header = {{ name = \"location\", regex = {} }}",
            toml_str(&regex)
        ));
    }
    if success.is_empty() {
        let phrase = distinctive(good, bad, user)
            .ok_or_else(|| ProbeError::Indistinguishable(good.describe()))?;
        success.push(format!("status = [{}]", good.status.as_u16()));
        success.push(format!("body_contains = {}", toml_str(&phrase)));
    }
    match distinctive(bad, good, user) {
        Some(phrase) => failure.push(format!("body_contains = {}", toml_str(&phrase))),
        None if good.status != bad.status => {
            failure.push(format!("status = [{}]", bad.status.as_u16()))
        }
        None => {}
    }
    let vault: Vec<String> = session.names.iter().map(|n| toml_str(n)).collect();
    let mut out = format!(
        "[routes.session]\nvault = [{}]\n\n[[routes.session.login]]\npath = {}\nmethods = [\"POST\"]\nsuccess = {{ {} }}\n",
        vault.join(", "),
        toml_str(&login.post_path),
        success.join(", ")
    );
    if !failure.is_empty() {
        let _ = writeln!(out, "failure = {{ {} }}", failure.join(", "));
    }
    let _ = writeln!(
        out,
        "subject = {{ form_field = {} }}",
        toml_str(&login.user_field)
    );
    if let Some(logout) = &opts.logout_path {
        let _ = write!(
            out,
            "\n[[routes.session.logout]]\npath = {}\nmethods = [\"POST\"]\nclear_site_data = true\n",
            toml_str(logout)
        );
    }
    Ok(out)
}

/// Section 4: the attack again, through sessiongate with the proposal.
async fn verify(
    client: &Client,
    opts: &ProbeOptions,
    login: &Login,
    oracle: &Oracle,
    answers: &Answers,
    report: &mut ProbeReport,
) -> Result<(), ProbeError> {
    let app = opts.app.trim_end_matches('/');
    let text = format!(
        "[server]\nplain_listen = \"127.0.0.1:0\"\nworker_threads = 1\n\n[[routes]]\nupstream = {}\n\n{}",
        toml_str(app),
        report.proposal
    );
    let config = crate::Config::from_toml(&text, std::path::Path::new("."))
        .map_err(|e| ProbeError::Verify(e.to_string()))?;
    let sg = config.session.cookie_name.clone();
    judge_recorded(&config, answers)?;
    let server = crate::Server::bind(config)
        .await
        .map_err(|e| ProbeError::Verify(e.to_string()))?;
    let addr: SocketAddr = server
        .plain_addr()
        .ok_or_else(|| ProbeError::Verify("no plain listener".into()))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let proxied: Uri = format!("http://{addr}")
        .parse()
        .map_err(|_| ProbeError::Verify("the listener's address".into()))?;
    let through = Through {
        client: client.towards(&proxied),
        sg: &sg,
    };
    let result = through.attack(login, oracle, opts, report).await;
    let _ = stop.send(());
    let _ = running.await;
    result
}

/// The proposed login rule, as sessiongate compiled it, on the two recorded answers: it
/// must take the good one for a success and the bad one for anything but.
fn judge_recorded(config: &crate::Config, answers: &Answers) -> Result<(), ProbeError> {
    let rule = config
        .routes
        .first()
        .and_then(|r| r.session.as_ref())
        .and_then(|s| s.login.first())
        .ok_or_else(|| ProbeError::Verify("the proposal has no login rule".into()))?;
    let judge = |a: &Answer| {
        rule.evaluate(&crate::rules::ResponseView {
            status: a.status,
            headers: &a.headers,
            body: &a.body[..a.body.len().min(rule.body_peek)],
        })
    };
    use crate::rules::Outcome;
    match (judge(&answers.good), judge(&answers.bad)) {
        (Outcome::Success, Outcome::Success) => Err(ProbeError::Indistinguishable(
            "the proposed rule takes the bad login for a success too".into(),
        )),
        (Outcome::Success, _) => Ok(()),
        (other, _) => Err(ProbeError::Verify(format!(
            "the proposed rule finds the good login {other:?}, not a success"
        ))),
    }
}

/// A client towards the in-process sessiongate, and its cookie's name.
struct Through<'a> {
    client: Client,
    sg: &'a str,
}

impl Through<'_> {
    async fn attack(
        &self,
        login: &Login,
        oracle: &Oracle,
        opts: &ProbeOptions,
        report: &mut ProbeReport,
    ) -> Result<(), ProbeError> {
        let (client, sg) = (&self.client, self.sg);
        let mut attacker = client.fresh();
        attacker.get("/").await?;
        attacker.get(&login.page).await?;
        let planted = attacker.jar.get(sg).cloned();
        let mut victim = client.fresh();
        victim.jar = attacker.jar.clone();
        let v = &mut report.verification;
        v.push(format!(
            "the attacker's visit got a sessiongate ID: {}",
            if planted.is_some() {
                "yes"
            } else {
                "no (the app set no vaulted cookie yet)"
            }
        ));
        let before = victim.jar.get(sg).cloned();
        login.attempt(&mut victim, &login.bad).await?;
        let kept = victim.jar.get(sg) == before.as_ref();
        v.push(format!(
            "the bad login kept its ID (the failure criterion holds): {}",
            if kept {
                "yes"
            } else {
                "no (it rotated: the failure criterion did not match)"
            }
        ));
        let before = victim.jar.get(sg).cloned();
        let first = login.attempt(&mut victim, &login.good).await?;
        victim.follow(first).await?;
        let rotated = victim.jar.contains_key(sg) && victim.jar.get(sg) != before.as_ref();
        v.push(format!(
            "the good login got a new ID: {}",
            if rotated { "yes" } else { "NO" }
        ));
        let reference = victim.get(&oracle.path).await?;
        let victim_in = oracle
            .signed_in(&mut victim.clone(), Some(&reference))
            .await?;
        v.push(format!(
            "the victim is signed in after it (checked on {}): {}",
            oracle.path,
            if victim_in {
                "yes"
            } else {
                "no (check --check PATH, or the rule)"
            }
        ));
        let attacker_in = oracle.signed_in(&mut attacker, Some(&reference)).await?;
        v.push(format!(
            "the ID planted before the login is signed in: {}",
            if attacker_in { "YES" } else { "no" }
        ));
        if let Some(logout) = &opts.logout_path {
            let before = victim.jar.get(sg).cloned();
            let r = victim.send(Method::POST, logout, Some(&[])).await?;
            let ended = !victim.jar.contains_key(sg) || victim.jar.get(sg) != before.as_ref();
            let mut old = victim.clone();
            if let Some(id) = before {
                old.jar.insert(sg.to_owned(), id);
            }
            let still = oracle.signed_in(&mut old, Some(&reference)).await?;
            report.verification.push(format!(
                "the logout ({}) ended the session: {}",
                r.status.as_u16(),
                if ended && !still { "yes" } else { "NO" }
            ));
        }
        report.blocked = rotated && victim_in && !attacker_in;
        Ok(())
    }
}
