//! Request bodies an app may read parameters from: which ones sessiongate reads, how it
//! finds credential fields in them, and how it removes fields named like a vaulted
//! cookie.
//!
//! A body is read (whole, within `max_request_body`) on a session route when the app
//! could parse it as a form: `application/x-www-form-urlencoded` under any spelling, a
//! missing or unparseable `Content-Type` (some frameworks parse such bodies as forms),
//! `multipart/form-data`, or JSON (credentials only). Every other body streams through
//! untouched.
//!
//! Multipart bodies are parsed with `multer` and *re-encoded* from what it parsed: the app
//! then reads exactly the parts sessiongate read (no preamble, no duplicate `name=`, no
//! odd quoting survives), whatever its own multipart parser would have made of the
//! original.

use bytes::Bytes;
use http::header::{self, HeaderMap};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::names::{self, NameGuard};

/// What happens to a multipart part named like a vaulted cookie.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MultipartPolicy {
    /// The part is removed and the body forwarded without it.
    #[default]
    Remove,
    /// The request gets a 400.
    Reject,
}

/// How the app could read a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    /// Fields separated by `&` or `;`.
    UrlEncoded,
    Multipart {
        boundary: String,
    },
    Json,
    /// Not a form: streamed untouched.
    Opaque,
}

/// What the request's `Content-Type` makes of its body.
pub fn body_kind(headers: &HeaderMap) -> BodyKind {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return BodyKind::UrlEncoded;
    };
    let Ok(ct) = ct.to_str() else {
        return BodyKind::UrlEncoded;
    };
    let lower = ct.trim().to_ascii_lowercase();
    // PHP cuts the media type at `;`, `,` or a space; others at `;` only.
    let essence = lower
        .split(|c: char| c == ';' || c == ',' || c.is_ascii_whitespace())
        .next()
        .unwrap_or_default();
    if essence.contains("urlencoded") || !essence.contains('/') {
        return BodyKind::UrlEncoded;
    }
    if essence.starts_with("multipart/") {
        return match multer::parse_boundary(ct) {
            Ok(boundary) => BodyKind::Multipart { boundary },
            // Cannot be parsed here: reading it as a form finds nothing, and the app
            // cannot parse it either; the request is refused in `inspect`.
            Err(_) => BodyKind::Multipart {
                boundary: String::new(),
            },
        };
    }
    if essence.ends_with("/json") || essence.ends_with("+json") {
        return BodyKind::Json;
    }
    BodyKind::Opaque
}

/// The body has a `Content-Encoding` other than `identity`.
pub fn is_encoded(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_ENCODING).iter().any(|v| {
        v.to_str().map_or(true, |v| {
            v.split(',')
                .any(|c| !c.trim().eq_ignore_ascii_case("identity") && !c.trim().is_empty())
        })
    })
}

/// More fields than any form has (PHP reads 1,000 by default): refused, so that a body of
/// millions of tiny fields cannot tie up a worker.
pub const MAX_FIELDS: usize = 10_000;

/// Whether the body's charset (if any) reads field names as ASCII does: a name such as
/// `password` in UTF-16 (which Tomcat decodes) would otherwise hide from every reading.
pub fn ascii_compatible_charset(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    ct.split(';').skip(1).all(|param| {
        let Some((k, v)) = param.split_once('=') else {
            return true;
        };
        if !k.trim().eq_ignore_ascii_case("charset") {
            return true;
        }
        let v = v.trim().trim_matches('"').to_ascii_lowercase();
        v == "utf-8"
            || v == "utf8"
            || v == "us-ascii"
            || v == "ascii"
            || v.starts_with("iso-8859-")
            || v == "latin1"
            || v.starts_with("windows-125")
    })
}

/// What reading a body found.
#[derive(Debug, Default)]
pub struct Inspected {
    /// The body to forward: the original, or a rewrite without protected fields.
    pub body: Bytes,
    /// A field (or nested name) listed in `credential_fields` is present.
    pub credentials: bool,
    /// The subject field's value, when asked for.
    pub subject: Option<String>,
    /// Fields or parts named like a vaulted cookie that were removed.
    pub removed: usize,
    /// The `Content-Type` to forward instead of the client's (multipart: a boundary of
    /// sessiongate's own, so no other reading of the client's header can find another).
    pub content_type: Option<String>,
}

/// What to look for and remove.
pub struct Inspect<'a> {
    pub protected: &'a NameGuard,
    pub strip: bool,
    pub credentials: &'a NameGuard,
    pub subject_field: Option<&'a str>,
    pub multipart: MultipartPolicy,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    #[error("the multipart body could not be parsed: {0}")]
    Multipart(String),
    #[error("a multipart part is named like a vaulted session cookie")]
    ProtectedPart,
    #[error("a multipart part name or file name cannot be re-encoded unambiguously")]
    Unencodable,
    #[error("the form has more than {MAX_FIELDS} fields")]
    TooManyFields,
}

/// Reads a whole body of the given kind.
pub async fn inspect(
    kind: &BodyKind,
    body: Bytes,
    what: &Inspect<'_>,
) -> Result<Inspected, FormError> {
    match kind {
        BodyKind::Opaque => Ok(Inspected {
            body,
            ..Inspected::default()
        }),
        BodyKind::UrlEncoded => urlencoded(body, what),
        BodyKind::Json => Ok(json(body, what)),
        BodyKind::Multipart { boundary } => multipart(body, boundary, what).await,
    }
}

/// Reads a form field from an `application/x-www-form-urlencoded` body prefix.
pub fn form_field(body: &[u8], field: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == field)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// Whether any `&`/`;`-separated field of a query string or form names a credential.
pub fn has_credential_field(fields: &[u8], credentials: &NameGuard) -> bool {
    !credentials.is_empty()
        && fields
            .split(|&b| b == b'&' || b == b';')
            .map(|f| f.split(|&b| b == b'=').next().unwrap_or_default())
            .any(|name| names::names_field(credentials, name))
}

fn urlencoded(body: Bytes, what: &Inspect<'_>) -> Result<Inspected, FormError> {
    let fields = body.iter().filter(|&&b| b == b'&' || b == b';').count();
    if fields >= MAX_FIELDS {
        return Err(FormError::TooManyFields);
    }
    let credentials = has_credential_field(&body, what.credentials);
    let subject = what.subject_field.and_then(|f| form_field(&body, f));
    let mut out = Inspected {
        credentials,
        subject,
        ..Inspected::default()
    };
    match what
        .strip
        .then(|| crate::vault::strip_fields(&body, what.protected))
        .flatten()
    {
        Some(stripped) => {
            out.removed = 1;
            out.body = stripped.into();
        }
        None => out.body = body,
    }
    Ok(out)
}

fn json(body: Bytes, what: &Inspect<'_>) -> Inspected {
    let mut out = Inspected::default();
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => {
            out.credentials = json_has_key(&v, what.credentials);
            out.subject = what.subject_field.and_then(|f| {
                v.get(f)
                    .and_then(|s| s.as_str())
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            });
        }
        // The app's JSON parser may be more lenient than serde_json: when in doubt, it is
        // a login attempt (a rotation costs nothing).
        Err(_) => out.credentials = !what.credentials.is_empty(),
    }
    out.body = body;
    out
}

fn json_has_key(v: &serde_json::Value, credentials: &NameGuard) -> bool {
    match v {
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| {
            names::names_field(credentials, k.as_bytes()) || json_has_key(v, credentials)
        }),
        serde_json::Value::Array(items) => items.iter().any(|v| json_has_key(v, credentials)),
        _ => false,
    }
}

async fn multipart(
    body: Bytes,
    boundary: &str,
    what: &Inspect<'_>,
) -> Result<Inspected, FormError> {
    if boundary.is_empty() {
        return Err(FormError::Multipart("no boundary in Content-Type".into()));
    }
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut out = Inspected::default();
    let mut kept = Vec::new();
    loop {
        let field = match parts.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(FormError::Multipart(e.to_string())),
        };
        let name = field.name().unwrap_or_default().to_owned();
        if name.is_empty() {
            return Err(FormError::Multipart("a part without a name".into()));
        }
        let part = Part {
            file_name: field.file_name().map(str::to_owned),
            content_type: field.content_type().map(ToString::to_string),
            data: field
                .bytes()
                .await
                .map_err(|e| FormError::Multipart(e.to_string()))?,
            name,
        };
        if what.protected.matches(part.name.as_bytes()) {
            match what.multipart {
                MultipartPolicy::Reject => return Err(FormError::ProtectedPart),
                MultipartPolicy::Remove => {
                    out.removed += 1;
                    continue;
                }
            }
        }
        if names::names_field(what.credentials, part.name.as_bytes()) {
            out.credentials = true;
        }
        if part.file_name.is_none() && what.subject_field == Some(part.name.as_str()) {
            out.subject = std::str::from_utf8(&part.data)
                .ok()
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
        }
        kept.push(part);
        if kept.len() + out.removed >= MAX_FIELDS {
            return Err(FormError::TooManyFields);
        }
    }
    // A boundary of our own, derived from the content so that the content cannot contain
    // it: the client's Content-Type is not forwarded, so a parser that reads another
    // `boundary` in it (PHP takes the first `boundary` substring) finds nothing else.
    let mut hash = Sha256::new();
    for p in &kept {
        hash.update(p.name.as_bytes());
        hash.update(&p.data);
    }
    let boundary = format!("sessiongate-{}", &hex::encode(hash.finalize())[..40]);
    let mut encoded = Vec::new();
    for p in &kept {
        if p.data
            .windows(boundary.len())
            .any(|w| w == boundary.as_bytes())
        {
            return Err(FormError::Unencodable);
        }
        encode_part(&mut encoded, &boundary, p)?;
    }
    encoded.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out.body = encoded.into();
    out.content_type = Some(format!("multipart/form-data; boundary={boundary}"));
    Ok(out)
}

/// One multipart part, as `multer` read it.
struct Part {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    data: Bytes,
}

/// Whether a parameter value can be written quoted so that every parser reads it back
/// the same. `;` and `=` are refused too: parsers that search the header for
/// `filename=` or `name=` (multer among them) find one inside a quoted value such as
/// `name="f; filename="` (found by fuzzing).
fn encodable(s: &str) -> bool {
    !s.chars()
        .any(|c| matches!(c, '"' | '\\' | ';' | '=') || c.is_control())
}

/// A part's `Content-Type` is written as is (its own `;` parameters kept): only what
/// would end or break the header line is refused.
fn encodable_type(s: &str) -> bool {
    !s.chars().any(|c| c == '"' || c == '\\' || c.is_control())
}

fn encode_part(out: &mut Vec<u8>, boundary: &str, part: &Part) -> Result<(), FormError> {
    let (name, file_name, content_type) = (
        part.name.as_str(),
        part.file_name.as_deref(),
        part.content_type.as_deref(),
    );
    if !encodable(name)
        || !file_name.is_none_or(encodable)
        || !content_type.is_none_or(encodable_type)
    {
        return Err(FormError::Unencodable);
    }
    out.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes(),
    );
    if let Some(f) = file_name {
        out.extend_from_slice(format!("; filename=\"{f}\"").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if let Some(ct) = content_type {
        out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&part.data);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(ct: Option<&str>) -> BodyKind {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        }
        body_kind(&h)
    }

    #[test]
    fn kinds() {
        assert_eq!(kind(None), BodyKind::UrlEncoded);
        assert_eq!(
            kind(Some("APPLICATION/X-WWW-FORM-URLENCODED")),
            BodyKind::UrlEncoded
        );
        assert_eq!(
            kind(Some("application/x-www-form-urlencoded;charset=utf-8")),
            BodyKind::UrlEncoded
        );
        assert_eq!(
            kind(Some("application/x-www-form-urlencoded , x")),
            BodyKind::UrlEncoded
        );
        assert_eq!(kind(Some("garbage")), BodyKind::UrlEncoded);
        assert_eq!(kind(Some("application/json")), BodyKind::Json);
        assert_eq!(kind(Some("application/vnd.api+json")), BodyKind::Json);
        assert_eq!(kind(Some("image/png")), BodyKind::Opaque);
        assert_eq!(
            kind(Some("multipart/form-data; boundary=XyZ")),
            BodyKind::Multipart {
                boundary: "XyZ".into()
            }
        );
    }

    fn what<'a>(p: &'a NameGuard, c: &'a NameGuard, policy: MultipartPolicy) -> Inspect<'a> {
        Inspect {
            protected: p,
            strip: true,
            credentials: c,
            subject_field: Some("username"),
            multipart: policy,
        }
    }

    #[tokio::test]
    async fn multipart_is_reencoded_without_protected_parts() {
        let p = NameGuard::new(["PHPSESSID"]);
        let c = NameGuard::new(["password"]);
        let body = "preamble\r\n--b\r\nContent-Disposition: form-data; name=\"PHPSESSID\"\r\n\r\nevil\r\n\
                    --b\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\nalice\r\n\
                    --b\r\nContent-Disposition: form-data; name=\"user[password]\"\r\n\r\nx\r\n--b--\r\n";
        let kind = BodyKind::Multipart {
            boundary: "b".into(),
        };
        let out = inspect(
            &kind,
            Bytes::from(body),
            &what(&p, &c, MultipartPolicy::Remove),
        )
        .await
        .unwrap();
        let text = String::from_utf8(out.body.to_vec()).unwrap();
        assert!(
            !text.contains("PHPSESSID") && !text.contains("preamble"),
            "{text}"
        );
        assert!(
            text.contains("name=\"username\"\r\n\r\nalice\r\n"),
            "{text}"
        );
        assert!(out.credentials);
        assert_eq!(out.subject.as_deref(), Some("alice"));
        assert_eq!(out.removed, 1);
        let err = inspect(
            &kind,
            Bytes::from(body),
            &what(&p, &c, MultipartPolicy::Reject),
        )
        .await;
        assert_eq!(err.unwrap_err(), FormError::ProtectedPart);
    }

    /// A quoted name holding `filename=` or `name=` reads differently in parsers that
    /// search the header for those (multer did, on our own re-encoding).
    #[tokio::test]
    async fn part_names_other_parsers_read_differently_are_refused() {
        let p = NameGuard::new(["PHPSESSID"]);
        let c = NameGuard::default();
        let kind = BodyKind::Multipart {
            boundary: "b".into(),
        };
        for header in [
            "name=\"f; filename=\"",
            "name=\"x; name=PHPSESSID\"",
            "name=\"f\"; filename=\"a=b; name=PHPSESSID\"",
        ] {
            let body =
                format!("--b\r\nContent-Disposition: form-data; {header}\r\n\r\nv\r\n--b--\r\n");
            let out = inspect(
                &kind,
                Bytes::from(body),
                &what(&p, &c, MultipartPolicy::Remove),
            )
            .await;
            assert_eq!(out.unwrap_err(), FormError::Unencodable, "{header}");
        }
        let typed = "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\n\
                     Content-Type: text/plain; charset=utf-8\r\n\r\nv\r\n--b--\r\n";
        let out = inspect(
            &kind,
            Bytes::from(typed),
            &what(&p, &c, MultipartPolicy::Remove),
        )
        .await;
        assert!(
            out.is_ok(),
            "a Content-Type with parameters is kept: {out:?}"
        );
    }

    #[tokio::test]
    async fn json_credentials() {
        let p = NameGuard::default();
        let c = NameGuard::new(["password"]);
        let w = what(&p, &c, MultipartPolicy::Remove);
        let out = inspect(
            &BodyKind::Json,
            Bytes::from(r#"{"user":{"Password":"x"},"username":"bob"}"#),
            &w,
        )
        .await
        .unwrap();
        assert!(out.credentials);
        assert_eq!(out.subject.as_deref(), Some("bob"));
        let out = inspect(&BodyKind::Json, Bytes::from(r#"{"q":1}"#), &w)
            .await
            .unwrap();
        assert!(!out.credentials);
        let out = inspect(&BodyKind::Json, Bytes::from("{password: 1}"), &w)
            .await
            .unwrap();
        assert!(
            out.credentials,
            "unparseable JSON counts as a login attempt"
        );
    }

    #[test]
    fn query_credentials() {
        let c = NameGuard::new(["password"]);
        assert!(has_credential_field(b"username=a&password=b", &c));
        assert!(has_credential_field(b"a=1;PASSWORD=b", &c));
        assert!(!has_credential_field(b"q=password", &c));
    }

    #[test]
    fn form_fields() {
        assert_eq!(
            form_field(b"username=al%69ce&password=x", "username").as_deref(),
            Some("alice")
        );
        assert_eq!(form_field(b"password=x", "username"), None);
    }
}
