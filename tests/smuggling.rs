//! Request smuggling: replays the public corpus in `/work/shared/smuggling-corpus/`
//! (`garden.json`: http-garden trophies; `smuggler.json`: defparam/smuggler
//! Transfer-Encoding gadgets, each in a CL.TE and a TE.CL request) through the proxy to a
//! raw TCP upstream that parses what sessiongate sends with a strict HTTP/1.1 parser.
//!
//! A case is safe when sessiongate rejected it (an error status, or the connection
//! closed without an answer) or forwarded it: every request the upstream received is
//! well-framed and unambiguous, the upstream received exactly as many requests as the
//! client got proxied `200 ok` answers, and a smuggled request never reaches the upstream
//! without the client getting its answer. After the cases, a plain GET on a new
//! connection must still be served.
//!
//! Attribution is exact: garden cases (fixed bytes) each get a proxy and an upstream of
//! their own; smuggler requests carry their case in the path (`/c/<key>/<role>`) and run
//! concurrently through one proxy. Every case ends with a probe request on the same
//! connection, so a case is over as soon as the probe is answered (or the connection
//! closes, or it has been idle a while).
//!
//! Set `SMUGGLING_CORPUS` to read the corpus from elsewhere.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rustls_pki_types::ServerName;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

/// The longest a case may take, from connecting to the last byte read.
const CASE_DEADLINE: Duration = Duration::from_secs(6);
/// A case whose probe was not answered ends after this long without a byte from the
/// proxy (and with the upstream's count matching the client's).
const IDLE: Duration = Duration::from_millis(1500);
/// Pause between the parts of a garden case (and before the probe).
const PART_PAUSE: Duration = Duration::from_millis(50);
/// Smuggler cases in flight at once through the shared proxy.
const SMUGGLER_CONCURRENCY: usize = 24;
/// Garden cases (each with a proxy of its own) in flight at once.
const GARDEN_CONCURRENCY: usize = 8;
/// A new-connection GET after every this many smuggler cases.
const HEALTH_EVERY: usize = 16;

const UPSTREAM_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

// ---------------------------------------------------------------- the corpus

fn corpus_dir() -> std::path::PathBuf {
    std::env::var_os("SMUGGLING_CORPUS")
        .map(Into::into)
        .unwrap_or_else(|| "/work/shared/smuggling-corpus".into())
}

fn load(name: &str) -> Vec<serde_json::Value> {
    let path = corpus_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the smuggling corpus is needed: {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex in the corpus: {e}"))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    H1,
    H2,
}

/// One request sequence to replay.
struct Case {
    /// The corpus id, plus the shape for smuggler gadgets.
    id: String,
    /// The attribution key (`/c/<key>/...`); path-safe.
    key: String,
    kind: Kind,
    parts: Vec<Vec<u8>>,
}

fn garden_cases() -> Vec<Case> {
    load("garden.json")
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let id = c["id"].as_str().unwrap().to_owned();
            let kind = match c["kind"].as_str().unwrap() {
                "h1" => Kind::H1,
                "h2" => Kind::H2,
                other => panic!("{id}: unknown kind {other:?}: cannot run this case"),
            };
            let parts: Vec<Vec<u8>> = c["parts_hex"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| unhex(p.as_str().unwrap()))
                .collect();
            assert!(!parts.is_empty(), "{id}: no parts");
            Case {
                id,
                key: format!("g{i}"),
                kind,
                parts,
            }
        })
        .collect()
}

fn smuggled_request(key: &str) -> Vec<u8> {
    format!("GET /c/{key}/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// CL.TE: Content-Length covers only the chunk-size line; the chunk's data is the
/// smuggled request. A Content-Length reader sees the smuggled request next; a chunked
/// reader sees it as the body.
fn cl_te(key: &str, gadget: &[u8]) -> Vec<u8> {
    let smuggled = smuggled_request(key);
    let size_line = format!("{:x}\r\n", smuggled.len());
    let mut out = format!(
        "POST /c/{key}/main HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n",
        size_line.len()
    )
    .into_bytes();
    out.extend_from_slice(gadget);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(size_line.as_bytes());
    out.extend_from_slice(&smuggled);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    out
}

/// TE.CL: Content-Length covers the whole (empty) chunked body plus a smuggled request.
/// A chunked reader sees the smuggled request next; a Content-Length reader sees it as
/// the body.
fn te_cl(key: &str, gadget: &[u8]) -> Vec<u8> {
    let mut body = b"0\r\n\r\n".to_vec();
    body.extend_from_slice(&smuggled_request(key));
    let mut out = format!(
        "POST /c/{key}/main HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(gadget);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
    out
}

fn smuggler_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (i, g) in load("smuggler.json").iter().enumerate() {
        let id = g["id"].as_str().unwrap();
        // `gadget_hex` holds the bytes already encoded (latin-1 or utf-8): send them as is.
        let encoding = g["encoding"].as_str().unwrap_or("latin-1");
        assert!(
            ["latin-1", "utf-8"].contains(&encoding),
            "{id}: unknown encoding {encoding:?}: cannot run this case"
        );
        let gadget = unhex(g["gadget_hex"].as_str().unwrap());
        let k = format!("s{i}.clte");
        out.push(Case {
            id: format!("smuggler:{id} CL.TE"),
            parts: vec![cl_te(&k, &gadget)],
            key: k,
            kind: Kind::H1,
        });
        let k = format!("s{i}.tecl");
        out.push(Case {
            id: format!("smuggler:{id} TE.CL"),
            parts: vec![te_cl(&k, &gadget)],
            key: k,
            kind: Kind::H1,
        });
    }
    out
}

// ---------------------------------------------------------------- strict HTTP/1.1 lines

enum Line<'a> {
    Ok(&'a [u8]),
    Incomplete,
    Bad(String),
}

/// The next CRLF-terminated line at `pos`; a bare LF or a CR not followed by LF is bad.
fn next_line<'a>(buf: &'a [u8], pos: &mut usize) -> Line<'a> {
    let rest = &buf[*pos..];
    let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
        return match rest.iter().position(|&b| b == b'\r') {
            Some(cr) if cr + 1 < rest.len() => Line::Bad(format!(
                "bare CR in a line: {}",
                show(&rest[..(cr + 2).min(rest.len())])
            )),
            _ => Line::Incomplete,
        };
    };
    if lf == 0 || rest[lf - 1] != b'\r' {
        return Line::Bad(format!("bare LF: {}", show(&rest[..lf + 1])));
    }
    let line = &rest[..lf - 1];
    if line.contains(&b'\r') {
        return Line::Bad(format!("bare CR in a line: {}", show(line)));
    }
    *pos += lf + 1;
    Line::Ok(line)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Printable, for messages.
fn show(b: &[u8]) -> String {
    show_up_to(b, 120)
}

fn show_up_to(b: &[u8], n: usize) -> String {
    let more = if b.len() > n { "..." } else { "" };
    format!("\"{}\"{more}", b[..b.len().min(n)].escape_ascii())
}

/// A header (or trailer) field line: name and value, or why it is ambiguous.
fn field(line: &[u8]) -> Result<(String, &[u8]), String> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(format!(
            "obs-fold (a field line starting with whitespace): {}",
            show(line)
        ));
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(format!("a field line without ':': {}", show(line)));
    };
    let name = &line[..colon];
    if name.is_empty() {
        return Err(format!("an empty header name: {}", show(line)));
    }
    if name.contains(&b'_') {
        return Err(format!("a header name with '_': {}", show(name)));
    }
    if name.iter().any(|&b| b == b' ' || b == b'\t') {
        return Err(format!("a header name with whitespace: {}", show(name)));
    }
    if !name.iter().all(|&b| is_tchar(b)) {
        return Err(format!(
            "a header name with a non-token byte: {}",
            show(name)
        ));
    }
    let rest = &line[colon + 1..];
    let value = rest.strip_prefix(b" ").unwrap_or(rest);
    if matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t')) {
        return Err(format!(
            "a header value with extra leading/trailing whitespace: {}",
            show(line)
        ));
    }
    if value.contains(&0) {
        return Err(format!("NUL in a header value: {}", show(line)));
    }
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!("a control byte in a header value: {}", show(line)));
    }
    Ok((String::from_utf8_lossy(name).to_ascii_lowercase(), value))
}

// ---------------------------------------------------------------- the recording upstream

#[derive(Debug, Clone)]
struct Recorded {
    role: String,
    target: String,
    /// The request as the upstream received it.
    raw: Vec<u8>,
}

#[derive(Debug, Default, Clone)]
struct CaseRec {
    requests: Vec<Recorded>,
    /// Why what the upstream received was ill-framed or ambiguous.
    errors: Vec<String>,
    /// Requests whose head arrived and whose end has not (yet).
    in_flight: usize,
    /// Requests cut off by the proxy closing the upstream connection mid-way.
    aborted: usize,
}

impl CaseRec {
    fn has(&self, role: &str) -> bool {
        self.requests.iter().any(|r| r.role == role)
    }
}

type RecLog = Arc<Mutex<HashMap<String, CaseRec>>>;

/// A raw TCP HTTP/1.1 server that parses strictly, records each request under the key in
/// its path (`/c/<key>/<role>`, else `default_key`), and answers `200 ok`.
struct Recorder {
    addr: SocketAddr,
    log: RecLog,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const UNATTRIBUTED: &str = "(unattributed)";

fn attribute(target: &str, default_key: &Option<String>) -> (String, String) {
    if let Some(rest) = target.strip_prefix("/c/") {
        let mut it = rest.splitn(2, '/');
        let key = it.next().unwrap_or_default();
        let role = it.next().unwrap_or_default();
        let role = role.split(['?', '/']).next().unwrap_or_default();
        if !key.is_empty() {
            return (key.to_owned(), role.to_owned());
        }
    }
    (
        default_key
            .clone()
            .unwrap_or_else(|| UNATTRIBUTED.to_owned()),
        "case".to_owned(),
    )
}

impl Recorder {
    async fn start(default_key: Option<String>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: RecLog = Default::default();
        let l = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                tokio::spawn(record_connection(tcp, l.clone(), default_key.clone()));
            }
        });
        Recorder { addr, log, task }
    }

    fn get(&self, key: &str) -> CaseRec {
        self.log
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    fn route(&self) -> String {
        format!("[[routes]]\nupstream = \"http://{}\"\n", self.addr)
    }
}

enum Parse {
    Done(String, usize),
    /// Needs more bytes; the target once the request line is in.
    Partial(Option<String>),
    Bad(Option<String>, String),
}

async fn record_connection(mut tcp: TcpStream, log: RecLog, default_key: Option<String>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut last_key: Option<String> = None;
    let mut flight: Option<String> = None;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        loop {
            match parse_request(&buf) {
                Parse::Done(target, used) => {
                    let (key, role) = attribute(&target, &default_key);
                    {
                        let mut g = log.lock().unwrap();
                        if let Some(k) = flight.take() {
                            g.entry(k).or_default().in_flight -= 1;
                        }
                        g.entry(key.clone()).or_default().requests.push(Recorded {
                            role,
                            target,
                            raw: buf[..used].to_vec(),
                        });
                    }
                    last_key = Some(key);
                    buf.drain(..used);
                    if tcp.write_all(UPSTREAM_RESPONSE).await.is_err() {
                        return;
                    }
                }
                Parse::Partial(target) => {
                    if let (Some(t), None) = (target, &flight) {
                        let (key, _) = attribute(&t, &default_key);
                        log.lock()
                            .unwrap()
                            .entry(key.clone())
                            .or_default()
                            .in_flight += 1;
                        flight = Some(key);
                    }
                    break;
                }
                Parse::Bad(target, why) => {
                    let key = target
                        .map(|t| attribute(&t, &default_key).0)
                        .or(last_key)
                        .or(default_key)
                        .unwrap_or_else(|| UNATTRIBUTED.to_owned());
                    let mut g = log.lock().unwrap();
                    if let Some(k) = flight.take() {
                        g.entry(k).or_default().in_flight -= 1;
                    }
                    g.entry(key).or_default().errors.push(why);
                    return; // closes the connection: nothing after this can be framed
                }
            }
        }
        let n = tcp.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            if !buf.is_empty() {
                let mut g = log.lock().unwrap();
                let key = flight
                    .clone()
                    .or(last_key)
                    .or(default_key)
                    .unwrap_or_else(|| UNATTRIBUTED.to_owned());
                if let Some(k) = flight.take() {
                    g.entry(k).or_default().in_flight -= 1;
                }
                g.entry(key).or_default().aborted += 1;
            }
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Strict HTTP/1.1 request parsing of what sessiongate sent.
fn parse_request(buf: &[u8]) -> Parse {
    let mut pos = 0;
    let line = match next_line(buf, &mut pos) {
        Line::Ok(l) => l,
        Line::Incomplete if buf.len() > 64 * 1024 => {
            return Parse::Bad(None, "a request line over 64 KiB".into())
        }
        Line::Incomplete => return Parse::Partial(None),
        Line::Bad(why) => return Parse::Bad(None, format!("{why} (request line)")),
    };
    if line.is_empty() {
        return Parse::Bad(None, "an empty line before the request line".into());
    }
    let words: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    if words.len() != 3 {
        return Parse::Bad(
            None,
            format!(
                "a request line that is not `method SP target SP version`: {}",
                show(line)
            ),
        );
    }
    let (method, target, version) = (words[0], words[1], words[2]);
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Parse::Bad(None, format!("an invalid method: {}", show(line)));
    }
    if target.is_empty() || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Parse::Bad(None, format!("an invalid request target: {}", show(line)));
    }
    let target = String::from_utf8_lossy(target).into_owned();
    let t = Some(target.clone());
    if version != b"HTTP/1.1" {
        return Parse::Bad(t, format!("a version other than HTTP/1.1: {}", show(line)));
    }

    let mut content_length: Vec<Vec<u8>> = Vec::new();
    let mut transfer_encoding: Vec<Vec<u8>> = Vec::new();
    let mut hosts = 0;
    loop {
        let line = match next_line(buf, &mut pos) {
            Line::Ok(l) => l,
            Line::Incomplete if buf.len() > 64 * 1024 => {
                return Parse::Bad(t, "a request head over 64 KiB".into())
            }
            Line::Incomplete => return Parse::Partial(t),
            Line::Bad(why) => return Parse::Bad(t, format!("{why} (header section)")),
        };
        if line.is_empty() {
            break;
        }
        let (name, value) = match field(line) {
            Ok(f) => f,
            Err(why) => return Parse::Bad(t, why),
        };
        match name.as_str() {
            "content-length" => content_length.push(value.to_vec()),
            "transfer-encoding" => transfer_encoding.push(value.to_vec()),
            "host" => hosts += 1,
            _ => {}
        }
    }
    if hosts > 1 {
        return Parse::Bad(t, "several Host headers".into());
    }
    if !content_length.is_empty() && !transfer_encoding.is_empty() {
        return Parse::Bad(
            t,
            format!(
                "both Content-Length and Transfer-Encoding (content-length: {}, transfer-encoding: {})",
                show(&content_length[0]),
                show(&transfer_encoding[0])
            ),
        );
    }
    if transfer_encoding.len() > 1 {
        return Parse::Bad(t, "several Transfer-Encoding headers".into());
    }
    if content_length.len() > 1 {
        return Parse::Bad(
            t,
            format!(
                "several Content-Length headers: {}",
                content_length
                    .iter()
                    .map(|v| show(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    if let Some(te) = transfer_encoding.first() {
        if te != b"chunked" {
            return Parse::Bad(
                t,
                format!(
                    "a Transfer-Encoding other than exactly \"chunked\": {}",
                    show(te)
                ),
            );
        }
        // Chunked body: 1*HEXDIG CRLF data CRLF ... 0 CRLF trailers CRLF.
        loop {
            let line = match next_line(buf, &mut pos) {
                Line::Ok(l) => l,
                Line::Incomplete => return Parse::Partial(t),
                Line::Bad(why) => return Parse::Bad(t, format!("{why} (chunk-size line)")),
            };
            if line.contains(&b';') {
                return Parse::Bad(t, format!("a chunk extension: {}", show(line)));
            }
            if line.is_empty() || line.len() > 15 || !line.iter().all(u8::is_ascii_hexdigit) {
                return Parse::Bad(t, format!("an invalid chunk size: {}", show(line)));
            }
            let size = usize::from_str_radix(std::str::from_utf8(line).unwrap(), 16).unwrap();
            if size == 0 {
                loop {
                    let line = match next_line(buf, &mut pos) {
                        Line::Ok(l) => l,
                        Line::Incomplete => return Parse::Partial(t),
                        Line::Bad(why) => return Parse::Bad(t, format!("{why} (trailers)")),
                    };
                    if line.is_empty() {
                        return Parse::Done(target, pos);
                    }
                    match field(line) {
                        Ok((name, _))
                            if ["content-length", "transfer-encoding", "host"]
                                .contains(&name.as_str()) =>
                        {
                            return Parse::Bad(t, format!("a {name} trailer"))
                        }
                        Ok(_) => {}
                        Err(why) => return Parse::Bad(t, format!("{why} (trailer)")),
                    }
                }
            }
            if buf.len() < pos + size + 2 {
                return Parse::Partial(t);
            }
            if &buf[pos + size..pos + size + 2] != b"\r\n" {
                return Parse::Bad(
                    t,
                    format!(
                        "chunk data not followed by CRLF: {}",
                        show(&buf[pos + size..])
                    ),
                );
            }
            pos += size + 2;
        }
    }
    if let Some(cl) = content_length.first() {
        if cl.is_empty() || cl.len() > 15 || !cl.iter().all(u8::is_ascii_digit) {
            return Parse::Bad(t, format!("an invalid Content-Length: {}", show(cl)));
        }
        if cl.len() > 1 && cl[0] == b'0' {
            return Parse::Bad(
                t,
                format!("a Content-Length with leading zeros: {}", show(cl)),
            );
        }
        let n: usize = std::str::from_utf8(cl).unwrap().parse().unwrap();
        if buf.len() < pos + n {
            return Parse::Partial(t);
        }
        pos += n;
    }
    Parse::Done(target, pos)
}

// ---------------------------------------------------------------- what the client got

#[derive(Debug, Clone)]
struct Resp {
    status: u16,
    body: Vec<u8>,
}

impl Resp {
    fn is_ok(&self) -> bool {
        self.status == 200 && self.body == b"ok"
    }
}

enum RParse {
    Done(Resp, usize),
    Partial,
    Bad(String),
}

/// One HTTP/1.1 response from sessiongate (which frames with Content-Length or chunked).
fn parse_response(buf: &[u8], eof: bool) -> RParse {
    let mut pos = 0;
    let line = match next_line(buf, &mut pos) {
        Line::Ok(l) => l,
        Line::Incomplete => return RParse::Partial,
        Line::Bad(why) => return RParse::Bad(why),
    };
    let status = match line {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'0' | b'1', b' ', a, b, c, ..]
            if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() =>
        {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return RParse::Bad(format!("not a status line: {}", show(line))),
    };
    let mut cl: Option<usize> = None;
    let mut chunked = false;
    loop {
        let line = match next_line(buf, &mut pos) {
            Line::Ok(l) => l,
            Line::Incomplete => return RParse::Partial,
            Line::Bad(why) => return RParse::Bad(why),
        };
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return RParse::Bad(format!("a response field line without ':': {}", show(line)));
        };
        let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim()
            .to_owned();
        match name.as_str() {
            "content-length" => match value.parse() {
                Ok(n) => cl = Some(n),
                Err(_) => return RParse::Bad(format!("response content-length {value:?}")),
            },
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    if status < 200 || status == 204 || status == 304 {
        return RParse::Done(
            Resp {
                status,
                body: vec![],
            },
            pos,
        );
    }
    if chunked {
        let mut body = Vec::new();
        loop {
            let line = match next_line(buf, &mut pos) {
                Line::Ok(l) => l,
                Line::Incomplete => return RParse::Partial,
                Line::Bad(why) => return RParse::Bad(why),
            };
            let hexpart = line.split(|&b| b == b';').next().unwrap_or_default();
            let Ok(size) =
                usize::from_str_radix(std::str::from_utf8(hexpart).unwrap_or("x").trim(), 16)
            else {
                return RParse::Bad(format!("response chunk size {}", show(line)));
            };
            if size == 0 {
                loop {
                    match next_line(buf, &mut pos) {
                        Line::Ok([]) => return RParse::Done(Resp { status, body }, pos),
                        Line::Ok(_) => {}
                        Line::Incomplete => return RParse::Partial,
                        Line::Bad(why) => return RParse::Bad(why),
                    }
                }
            }
            if buf.len() < pos + size + 2 {
                return RParse::Partial;
            }
            body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
    }
    match cl {
        Some(n) if buf.len() >= pos + n => RParse::Done(
            Resp {
                status,
                body: buf[pos..pos + n].to_vec(),
            },
            pos + n,
        ),
        Some(_) => RParse::Partial,
        None if eof => RParse::Done(
            Resp {
                status,
                body: buf[pos..].to_vec(),
            },
            buf.len(),
        ),
        None => RParse::Partial,
    }
}

#[derive(Debug, Default)]
struct Outcome {
    /// Final responses, in order.
    responses: Vec<Resp>,
    closed: bool,
    deadline: bool,
    /// The client could not run the case, or could not read what came back.
    error: Option<String>,
}

impl Outcome {
    fn oks(&self) -> usize {
        self.responses.iter().filter(|r| r.is_ok()).count()
    }
}

async fn connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let fut = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(cfg)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| "connect/TLS handshake timed out".to_owned())?
}

/// Writes `parts` (pausing between them) on a new TLS connection and reads what comes
/// back until the connection closes, `done_role` has been recorded for `key` and every
/// request the upstream got for `key` has its answer, it has been idle for [`IDLE`], or
/// [`CASE_DEADLINE`].
async fn run_h1(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    parts: Vec<Vec<u8>>,
    rec: &Recorder,
    key: &str,
    done_role: &str,
) -> Outcome {
    let start = Instant::now();
    let deadline = start + CASE_DEADLINE;
    let mut out = Outcome::default();
    let tls = match connect(addr, cfg).await {
        Ok(t) => t,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(tls);
    let written = Arc::new(AtomicBool::new(false));
    let w = written.clone();
    let writer = tokio::spawn(async move {
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(PART_PAUSE).await;
            }
            if wr.write_all(p).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        w.store(true, Ordering::SeqCst);
        // Keep the write half open (a close_notify would end the case early).
        std::future::pending::<()>().await;
        drop(wr);
    });

    let mut buf = Vec::new();
    let mut cursor = 0;
    let mut tmp = vec![0u8; 16 * 1024];
    let mut last = Instant::now();
    let mut was_written = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            out.deadline = true;
            break;
        }
        let slice = (deadline - now).min(Duration::from_millis(25));
        let mut eof = false;
        match tokio::time::timeout(slice, rd.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => eof = true,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&tmp[..n]);
                last = Instant::now();
            }
            Err(_) => {}
        }
        while out.error.is_none() && cursor < buf.len() {
            match parse_response(&buf[cursor..], eof) {
                RParse::Done(r, used) => {
                    cursor += used;
                    if r.status >= 200 {
                        out.responses.push(r);
                    }
                }
                RParse::Partial => break,
                RParse::Bad(why) => {
                    out.error = Some(format!("unparseable response from sessiongate: {why}"))
                }
            }
        }
        if eof {
            out.closed = true;
            if cursor < buf.len() && out.error.is_none() {
                out.error = Some(format!(
                    "a truncated response from sessiongate: {}",
                    show(&buf[cursor..])
                ));
            }
            break;
        }
        if out.error.is_some() {
            break;
        }
        if !was_written && written.load(Ordering::SeqCst) {
            was_written = true;
            last = last.max(Instant::now());
        }
        if was_written {
            let r = rec.get(key);
            let settled = r.in_flight == 0 && r.requests.len() == out.oks();
            if settled && r.has(done_role) && cursor == buf.len() {
                break;
            }
            if settled && last.elapsed() >= IDLE {
                break;
            }
        }
    }
    writer.abort();
    out
}

// ---------------------------------------------------------------- HTTP/2 cases

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix at `b[*i]`.
fn hpack_int(b: &[u8], i: &mut usize, n: u32) -> Option<usize> {
    let max = (1usize << n) - 1;
    let mut v = usize::from(*b.get(*i)?) & max;
    *i += 1;
    if v < max {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let byte = *b.get(*i)?;
        *i += 1;
        v += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 || shift > 28 {
            return Some(v);
        }
    }
}

/// Huffman-decodes a string of digits (all a `:status` holds).
fn huffman_digits(b: &[u8]) -> Option<String> {
    let bits: Vec<u8> = b
        .iter()
        .flat_map(|byte| (0..8).rev().map(move |k| (byte >> k) & 1))
        .collect();
    let take = |at: usize, n: usize| -> Option<u32> {
        (at + n <= bits.len()).then(|| {
            bits[at..at + n]
                .iter()
                .fold(0, |a, &x| a * 2 + u32::from(x))
        })
    };
    let mut out = String::new();
    let mut at = 0;
    while at < bits.len() {
        if bits.len() - at < 8 && bits[at..].iter().all(|&x| x == 1) {
            break; // EOS padding
        }
        if let Some(c @ 0..=2) = take(at, 5) {
            out.push(char::from(b'0' + u8::try_from(c).unwrap()));
            at += 5;
            continue;
        }
        match take(at, 6) {
            Some(c @ 0x19..=0x1f) => {
                out.push(char::from(b'3' + u8::try_from(c - 0x19).unwrap()));
                at += 6;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The `:status` of a response header block (the server sends it first).
fn h2_status(block: &[u8]) -> Option<u16> {
    const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    let mut i = 0;
    loop {
        let b = *block.get(i)?;
        if b & 0xe0 == 0x20 {
            hpack_int(block, &mut i, 5)?; // dynamic table size update
            continue;
        }
        if b & 0x80 != 0 {
            let idx = hpack_int(block, &mut i, 7)?;
            return (8..=14).contains(&idx).then(|| STATIC[idx - 8]);
        }
        let idx = if b & 0xc0 == 0x40 {
            hpack_int(block, &mut i, 6)?
        } else {
            hpack_int(block, &mut i, 4)?
        };
        if !(8..=14).contains(&idx) {
            return None;
        }
        let huff = *block.get(i)? & 0x80 != 0;
        let len = hpack_int(block, &mut i, 7)?;
        let raw = block.get(i..i + len)?;
        let text = if huff {
            huffman_digits(raw)?
        } else {
            String::from_utf8(raw.to_vec()).ok()?
        };
        return text.parse().ok();
    }
}

/// The responses in what an HTTP/2 server sent: one per stream with a final status.
fn parse_h2(buf: &[u8]) -> Result<Vec<Resp>, String> {
    let mut streams: BTreeMap<u32, (Option<u16>, Vec<u8>)> = BTreeMap::new();
    let mut pos = 0;
    while buf.len() >= pos + 9 {
        let len = usize::from(buf[pos]) << 16
            | usize::from(buf[pos + 1]) << 8
            | usize::from(buf[pos + 2]);
        let (kind, flags) = (buf[pos + 3], buf[pos + 4]);
        let stream = u32::from_be_bytes(buf[pos + 5..pos + 9].try_into().unwrap()) & 0x7fff_ffff;
        if buf.len() < pos + 9 + len {
            break;
        }
        let mut p = &buf[pos + 9..pos + 9 + len];
        pos += 9 + len;
        if matches!(kind, 0 | 1) && flags & 0x08 != 0 {
            let pad = usize::from(*p.first().ok_or("empty padded frame")?);
            p = p.get(1..p.len().saturating_sub(pad)).ok_or("bad padding")?;
        }
        match kind {
            0 => streams.entry(stream).or_default().1.extend_from_slice(p),
            1 => {
                if flags & 0x20 != 0 {
                    p = p.get(5..).ok_or("bad priority")?;
                }
                let s = streams.entry(stream).or_default();
                match h2_status(p) {
                    Some(st) if st < 200 => {}
                    st if s.0.is_none() => s.0 = Some(st.unwrap_or(0)),
                    _ => {} // trailers
                }
            }
            _ => {}
        }
    }
    Ok(streams
        .into_values()
        .filter_map(|(st, body)| st.map(|status| Resp { status, body }))
        .collect())
}

/// Writes an h2 case's bytes (preface included) on an ALPN-h2 connection, acknowledges
/// the server's settings, and reads until close, idle or the deadline.
async fn run_h2(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    parts: Vec<Vec<u8>>,
    rec: &Recorder,
    key: &str,
) -> Outcome {
    let deadline = Instant::now() + CASE_DEADLINE;
    let mut out = Outcome::default();
    let mut tls = match connect(addr, cfg).await {
        Ok(t) => t,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        out.error = Some("ALPN h2 was not negotiated".into());
        return out;
    }
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(PART_PAUSE).await;
        }
        if tls.write_all(p).await.is_err() {
            break;
        }
    }
    let _ = tls.write_all(&h2_frame(4, 1, 0, &[])).await; // SETTINGS ACK
    let _ = tls.flush().await;
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 16 * 1024];
    let mut last = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            out.deadline = true;
            break;
        }
        let slice = (deadline - now).min(Duration::from_millis(25));
        match tokio::time::timeout(slice, tls.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                out.closed = true;
                break;
            }
            Ok(Ok(n)) => {
                buf.extend_from_slice(&tmp[..n]);
                last = Instant::now();
            }
            Err(_) => {}
        }
        let oks = parse_h2(&buf)
            .map(|r| r.iter().filter(|r| r.is_ok()).count())
            .unwrap_or(0);
        let r = rec.get(key);
        if r.in_flight == 0 && r.requests.len() == oks && last.elapsed() >= IDLE {
            break;
        }
    }
    match parse_h2(&buf) {
        Ok(r) => out.responses = r,
        Err(e) => out.error = Some(format!("unparseable HTTP/2 from sessiongate: {e}")),
    }
    out
}

// ---------------------------------------------------------------- verdicts

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Rejected,
    ForwardedOk,
}

/// `Ok(class)` when the case is safe, else every reason it is not.
fn verdict(out: &Outcome, rec: &CaseRec) -> Result<Class, Vec<String>> {
    let mut why = Vec::new();
    if let Some(e) = &out.error {
        why.push(e.clone());
    }
    for e in &rec.errors {
        why.push(format!("ill-framed request at the upstream: {e}"));
    }
    for r in &out.responses {
        if !r.is_ok() && r.status < 400 {
            why.push(format!(
                "unexpected response from sessiongate: {} {}",
                r.status,
                show(&r.body)
            ));
        }
    }
    let oks = out.oks();
    if rec.requests.len() != oks {
        why.push(format!(
            "the upstream received {} request(s) ({}) but the client got {} proxied ok response(s){}",
            rec.requests.len(),
            rec.requests.iter().map(|r| r.target.as_str()).collect::<Vec<_>>().join(" "),
            oks,
            if out.deadline { " (case deadline hit)" } else { "" }
        ));
    }
    if let Some(k) = rec.requests.iter().position(|r| r.role == "smuggled") {
        if oks < k + 1 {
            why.push(format!(
                "the smuggled request reached the upstream (as request #{}) without its own answer to the client",
                k + 1
            ));
        }
    }
    if !why.is_empty() {
        return Err(why);
    }
    if rec.requests.iter().all(|r| r.role == "probe") {
        Ok(Class::Rejected)
    } else {
        Ok(Class::ForwardedOk)
    }
}

fn probe(key: &str) -> Vec<u8> {
    format!("GET /c/{key}/probe HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// A plain GET on a new connection; `None` when it was served.
async fn health(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    rec: &Recorder,
    key: &str,
) -> Option<String> {
    let req = format!("GET /c/{key}/health HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes();
    let out = run_h1(addr, cfg, vec![req], rec, key, "health").await;
    let r = rec.get(key);
    let statuses: Vec<u16> = out.responses.iter().map(|r| r.status).collect();
    if out.error.is_none()
        && out.oks() == 1
        && out.responses.len() == 1
        && r.requests.len() == 1
        && r.errors.is_empty()
    {
        None
    } else {
        Some(format!(
            "a normal GET on a new connection was not served: error {:?}, statuses {statuses:?}, upstream saw {} request(s), errors {:?}",
            out.error,
            r.requests.len(),
            r.errors
        ))
    }
}

struct Report {
    total: usize,
    rejected: usize,
    forwarded: usize,
    unsafe_cases: usize,
    /// New-connection GETs made, and how many were not served (also in `failures`).
    health: usize,
    health_failed: usize,
    /// (case id, reason)
    failures: Vec<(String, String)>,
}

impl Report {
    fn add(&mut self, id: &str, out: &Outcome, rec: &CaseRec) {
        let v = verdict(out, rec);
        if let Some(level) = std::env::var_os("SMUGGLING_VERBOSE") {
            let verbose_raw = level == "raw";
            eprintln!(
                "{id}: {} | client: {:?}{}{}{} | upstream: {:?}{}",
                match &v {
                    Ok(Class::Rejected) => "rejected",
                    Ok(Class::ForwardedOk) => "forwarded-ok",
                    Err(_) => "UNSAFE",
                },
                out.responses.iter().map(|r| r.status).collect::<Vec<_>>(),
                if out.closed { " closed" } else { "" },
                if out.deadline { " deadline" } else { "" },
                out.error
                    .as_deref()
                    .map(|e| format!(" error {e}"))
                    .unwrap_or_default(),
                rec.requests
                    .iter()
                    .map(|r| if verbose_raw {
                        show_up_to(&r.raw, 600)
                    } else {
                        r.target.clone()
                    })
                    .collect::<Vec<_>>(),
                if rec.aborted > 0 {
                    format!(" aborted {}", rec.aborted)
                } else {
                    String::new()
                },
            );
        }
        self.total += 1;
        match v {
            Ok(Class::Rejected) => self.rejected += 1,
            Ok(Class::ForwardedOk) => self.forwarded += 1,
            Err(why) => {
                self.unsafe_cases += 1;
                for w in why {
                    self.failures.push((id.to_owned(), w));
                }
            }
        }
    }
}

// ---------------------------------------------------------------- the test

async fn run_garden(report: &mut Report) {
    let cases = garden_cases();
    let results: Vec<(String, Outcome, CaseRec, Option<String>)> =
        futures_util::stream::iter(cases)
            .map(|case| async move {
                let rec = Recorder::start(Some(case.key.clone())).await;
                let proxy = Proxy::start(&rec.route()).await;
                let out = match case.kind {
                    Kind::H1 => {
                        let mut parts = case.parts.clone();
                        parts.push(probe(&case.key));
                        let cfg = proxy.pki.client_config(&[b"http/1.1"]);
                        run_h1(proxy.addr, cfg, parts, &rec, &case.key, "probe").await
                    }
                    Kind::H2 => {
                        let cfg = proxy.pki.client_config(&[b"h2"]);
                        run_h2(proxy.addr, cfg, case.parts.clone(), &rec, &case.key).await
                    }
                };
                let hkey = format!("{}h", case.key);
                let cfg = proxy.pki.client_config(&[b"http/1.1"]);
                let sick = health(proxy.addr, cfg, &rec, &hkey).await;
                // Let anything the proxy still had in flight land before judging.
                settle(&rec, &case.key).await;
                let mut r = rec.get(&case.key);
                let log = rec.log.lock().unwrap().clone();
                for (k, v) in log {
                    if k != case.key && k != hkey {
                        r.errors
                            .push(format!("requests under an unknown key {k}: {v:?}"));
                    }
                }
                (case.id, out, r, sick)
            })
            .buffer_unordered(GARDEN_CONCURRENCY)
            .collect()
            .await;
    let mut results = results;
    results.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, out, rec, sick) in results {
        report.add(&id, &out, &rec);
        report.health += 1;
        if let Some(s) = sick {
            report.health_failed += 1;
            report.failures.push((format!("{id} (then)"), s));
        }
    }
}

async fn settle(rec: &Recorder, key: &str) {
    for _ in 0..100 {
        if rec.get(key).in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

enum Job {
    Case(Case),
    Health(String, String),
}

async fn run_smuggler(report: &mut Report) {
    let rec = Recorder::start(None).await;
    let proxy = Proxy::start(&rec.route()).await;
    let cfg = proxy.pki.client_config(&[b"http/1.1"]);
    let cases = smuggler_cases();
    let mut jobs = Vec::new();
    let mut known: std::collections::HashSet<String> = Default::default();
    for (i, c) in cases.into_iter().enumerate() {
        let after = c.id.clone();
        known.insert(c.key.clone());
        jobs.push(Job::Case(c));
        if (i + 1) % HEALTH_EVERY == 0 {
            let hk = format!("h{i}");
            known.insert(hk.clone());
            jobs.push(Job::Health(hk, after));
            report.health += 1;
        }
    }
    let health_failures: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    let (rec_ref, proxy_ref, cfg_ref, hf) = (&rec, &proxy, &cfg, &health_failures);
    let results: Vec<(Case, Outcome)> = futures_util::stream::iter(jobs)
        .map(|job| async move {
            match job {
                Job::Case(case) => {
                    let mut parts = case.parts.clone();
                    parts.push(probe(&case.key));
                    let out = run_h1(
                        proxy_ref.addr,
                        cfg_ref.clone(),
                        parts,
                        rec_ref,
                        &case.key,
                        "probe",
                    )
                    .await;
                    Ok((case, out))
                }
                Job::Health(hk, after) => {
                    Err(health(proxy_ref.addr, cfg_ref.clone(), rec_ref, &hk)
                        .await
                        .map(|s| (format!("{after} (within the next {HEALTH_EVERY} cases)"), s)))
                }
            }
        })
        .buffer_unordered(SMUGGLER_CONCURRENCY)
        .filter_map(|r| {
            let keep = match r {
                Ok(pair) => Some(pair),
                Err(Some(f)) => {
                    eprintln!("health check failed after {}: {}", f.0, f.1);
                    hf.lock().unwrap().push(f);
                    None
                }
                Err(None) => None,
            };
            async move { keep }
        })
        .collect()
        .await;
    // Judge against the recorder's final state, once late arrivals have landed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut results = results;
    results.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    for (case, out) in &results {
        settle(&rec, &case.key).await;
        report.add(&case.id, out, &rec.get(&case.key));
    }
    for f in health_failures.into_inner().unwrap() {
        report.health_failed += 1;
        report.failures.push(f);
    }
    report.health += 1;
    if let Some(s) = health(proxy.addr, cfg.clone(), &rec, "final").await {
        report.health_failed += 1;
        report
            .failures
            .push(("smuggler corpus (after all cases)".into(), s));
    }
    known.insert("final".into());
    let log = rec.log.lock().unwrap().clone();
    for (k, v) in log {
        if !known.contains(&k) {
            report.failures.push((
                format!("upstream key {k}"),
                format!("requests the test cannot attribute: {v:?}"),
            ));
        }
    }
}

/// The part of a reason that names the kind of failure, for grouping.
fn reason_class(reason: &str) -> String {
    let head = |s: &str| s.split([':', '(']).next().unwrap_or(s).trim().to_owned();
    if let Some(why) = reason.strip_prefix("ill-framed request at the upstream: ") {
        return format!("ill-framed request at the upstream: {}", head(why));
    }
    let r = head(reason);
    if r.starts_with("the upstream received") {
        "the upstream received a different number of requests than the client got ok answers".into()
    } else {
        r
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_corpus_is_rejected_or_forwarded_unambiguously() {
    let started = Instant::now();
    let mut report = Report {
        total: 0,
        rejected: 0,
        forwarded: 0,
        unsafe_cases: 0,
        health: 0,
        health_failed: 0,
        failures: Vec::new(),
    };
    run_garden(&mut report).await;
    let garden_done = started.elapsed();
    run_smuggler(&mut report).await;

    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, why) in &report.failures {
        groups
            .entry(reason_class(why))
            .or_default()
            .push(format!("{id}: {why}"));
    }
    let mut text = String::new();
    for (class, lines) in &groups {
        text.push_str(&format!("\n== {class} ({} failure(s))\n", lines.len()));
        for l in lines {
            text.push_str(&format!("  {l}\n"));
        }
    }
    println!(
        "smuggling corpus: {} cases, {} rejected, {} forwarded-ok, {} unsafe ({} new-connection GETs, {} not served; {:.1?}, garden {:.1?})",
        report.total,
        report.rejected,
        report.forwarded,
        report.unsafe_cases,
        report.health,
        report.health_failed,
        started.elapsed(),
        garden_done
    );
    assert!(
        report.failures.is_empty(),
        "{} case(s) unsafe, {} new-connection GET(s) not served:{text}",
        report.unsafe_cases,
        report.health_failed
    );
}

// ---------------------------------------------------------------- the checks themselves

#[test]
fn the_strict_upstream_parser_flags_ambiguous_framing() {
    let ok = |raw: &[u8]| match parse_request(raw) {
        Parse::Done(_, used) => assert_eq!(used, raw.len(), "{}", show(raw)),
        Parse::Partial(_) => panic!("partial: {}", show(raw)),
        Parse::Bad(_, why) => panic!("{why}: {}", show(raw)),
    };
    ok(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n");
    ok(b"GET /x HTTP/1.1\r\nhost: a\r\nx:\r\ny: \r\n\r\n");
    ok(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nhi");
    ok(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n");
    ok(b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n");
    ok(b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-t: 1\r\n\r\n");

    let bad = |raw: &[u8], want: &str| match parse_request(raw) {
        Parse::Bad(_, why) => assert!(why.contains(want), "{why:?} does not say {want:?}"),
        _ => panic!("accepted: {}", show(raw)),
    };
    bad(
        b"POST / HTTP/1.1\r\ncontent-length: 010\r\n\r\n0123456789",
        "leading zeros",
    );
    bad(
        b"POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\nZ",
        "invalid Content-Length",
    );
    bad(
        b"POST / HTTP/1.1\r\ncontent-length: \r\n\r\n",
        "invalid Content-Length",
    );
    bad(
        b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\nZ",
        "several Content-Length",
    );
    bad(
        b"POST / HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "both",
    );
    bad(
        b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "exactly",
    );
    bad(
        b"POST / HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n0\r\n\r\n",
        "exactly",
    );
    bad(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", "several Transfer-Encoding");
    bad(
        b"GET / HTTP/1.1\r\ntransfer_encoding: chunked\r\n\r\n",
        "'_'",
    );
    bad(
        b"GET / HTTP/1.1\r\ncontent-length : 0\r\n\r\n",
        "whitespace",
    );
    bad(b"GET / HTTP/1.1\r\n\xefoo: bar\r\n\r\n", "non-token");
    bad(b"GET / HTTP/1.1\r\n: x\r\n\r\n", "empty header name");
    bad(b"GET / HTTP/1.1\r\nno colon\r\n\r\n", "without ':'");
    bad(b"GET / HTTP/1.1\r\nx: a\r\n b\r\n\r\n", "obs-fold");
    bad(b"GET / HTTP/1.1\nhost: a\r\n\r\n", "bare LF");
    bad(b"GET / HTTP/1.1\r\nhost: a\n\r\n", "bare LF");
    bad(b"GET / HTTP/1.1\r\nx: a\rb\r\n\r\n", "bare CR");
    bad(b"GET / HTTP/1.1\r\nx: a\x00b\r\n\r\n", "NUL");
    bad(b"GET / HTTP/1.1\r\nx: a\x01b\r\n\r\n", "control byte");
    bad(b"GET / HTTP/1.1\r\nx:  a\r\n\r\n", "whitespace");
    bad(b"GET / HTTP/1.1\r\nx: a\t\r\n\r\n", "whitespace");
    bad(
        b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        "several Host",
    );
    bad(b"\r\nGET / HTTP/1.1\r\n\r\n", "empty line");
    bad(b"GET  / HTTP/1.1\r\n\r\n", "request line");
    bad(b"GET / HTTP/1.0\r\n\r\n", "HTTP/1.1");
    bad(
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n1;x=y\r\nZ\r\n0\r\n\r\n",
        "chunk extension",
    );
    bad(
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0x1\r\nZ\r\n0\r\n\r\n",
        "chunk size",
    );
    bad(
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n 0\r\n\r\n",
        "chunk size",
    );
    bad(
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n1\r\nZZ\r\n0\r\n\r\n",
        "CRLF",
    );
    bad(
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\ncontent-length: 1\r\n\r\n",
        "trailer",
    );

    assert!(matches!(
        parse_request(b"POST /c/k/main HTTP/1.1\r\ncontent-length: 3\r\n\r\nab"),
        Parse::Partial(Some(t)) if t == "/c/k/main"
    ));
    assert!(matches!(
        parse_request(b"GET /c/k/main HT"),
        Parse::Partial(None)
    ));
    assert_eq!(
        attribute("/c/s1.tecl/smuggled", &None),
        ("s1.tecl".into(), "smuggled".into())
    );
    assert_eq!(
        attribute("/", &Some("g1".into())),
        ("g1".into(), "case".into())
    );
}

#[test]
fn verdicts_compare_what_the_upstream_got_with_what_the_client_got() {
    let rec = |reqs: &[(&str, &str)]| CaseRec {
        requests: reqs
            .iter()
            .map(|(role, target)| Recorded {
                role: (*role).into(),
                target: (*target).into(),
                raw: vec![],
            })
            .collect(),
        ..Default::default()
    };
    let out = |resps: &[(u16, &str)]| Outcome {
        responses: resps
            .iter()
            .map(|(status, body)| Resp {
                status: *status,
                body: body.as_bytes().to_vec(),
            })
            .collect(),
        ..Default::default()
    };
    assert_eq!(verdict(&out(&[(400, "")]), &rec(&[])), Ok(Class::Rejected));
    assert_eq!(verdict(&out(&[]), &rec(&[])), Ok(Class::Rejected));
    assert_eq!(
        verdict(&out(&[(404, "x"), (200, "ok")]), &rec(&[("probe", "/p")])),
        Ok(Class::Rejected)
    );
    assert_eq!(
        verdict(
            &out(&[(200, "ok"), (200, "ok")]),
            &rec(&[("main", "/m"), ("probe", "/p")])
        ),
        Ok(Class::ForwardedOk)
    );
    assert_eq!(
        verdict(
            &out(&[(200, "ok"), (200, "ok"), (400, "")]),
            &rec(&[("main", "/m"), ("smuggled", "/s")])
        ),
        Ok(Class::ForwardedOk)
    );
    // The upstream got a request the client never saw an answer to.
    assert!(verdict(
        &out(&[(200, "ok")]),
        &rec(&[("main", "/m"), ("smuggled", "/s")])
    )
    .is_err());
    assert!(verdict(&out(&[(502, "")]), &rec(&[("smuggled", "/s")])).is_err());
    assert!(verdict(&out(&[(200, "ok")]), &rec(&[])).is_err());
    // Anything ill-framed at the upstream, whatever the client saw.
    let mut r = rec(&[]);
    r.errors.push("a Content-Length with leading zeros".into());
    assert!(verdict(&out(&[(502, "")]), &r).is_err());
    // A success that did not come from the upstream.
    assert!(verdict(&out(&[(204, "")]), &rec(&[])).is_err());
}
