//! Set-Cookie hardening, table-driven, through the real proxy: the app answers each case
//! with its Set-Cookie lines, and the test asserts exactly what the client received and
//! that the app received the request (with the client's Cookie header) untouched.
//!
//! Routes: `/` (SameSite lax, XSRF-TOKEN script-readable), `/strict`, `/none`, and
//! `/nodomain` (strip_domain).
#![allow(clippy::unwrap_used)]

mod support;

use http::{HeaderValue, Request};
use sessiongate::full_body;
use support::*;

struct Case {
    path: &'static str,
    app_sends: &'static [&'static [u8]],
    client_gets: &'static [&'static [u8]],
}

const fn case(
    path: &'static str,
    app_sends: &'static [&'static [u8]],
    client_gets: &'static [&'static [u8]],
) -> Case {
    Case {
        path,
        app_sends,
        client_gets,
    }
}

const CASES: &[Case] = &[
    // Flags added, nothing else touched.
    case("/", &[b"sid=abc"], &[b"sid=abc; HttpOnly; Secure; SameSite=Lax"]),
    case("/", &[b"sid=abc; Path=/; HttpOnly"], &[b"sid=abc; Path=/; HttpOnly; Secure; SameSite=Lax"]),
    // Django writes `Set-Cookie:  sessionid=...` (two spaces); the value is trimmed.
    case(
        "/",
        &[b" sessionid=q8c2; expires=Thu, 10 Dec 2026 12:00:00 GMT; HttpOnly; Max-Age=1209600; Path=/; SameSite=Lax"],
        &[b"sessionid=q8c2; expires=Thu, 10 Dec 2026 12:00:00 GMT; HttpOnly; Max-Age=1209600; Path=/; SameSite=Lax; Secure"],
    ),
    // PHP's default session cookie.
    case("/", &[b"PHPSESSID=2bq5; path=/"], &[b"PHPSESSID=2bq5; path=/; HttpOnly; Secure; SameSite=Lax"]),
    // Express / connect.sid with a signed, URL-encoded value.
    case(
        "/",
        &[b"connect.sid=s%3AQw9.x%2Bk; Path=/; Expires=Fri, 27 Nov 2026 12:00:00 GMT; HttpOnly"],
        &[b"connect.sid=s%3AQw9.x%2Bk; Path=/; Expires=Fri, 27 Nov 2026 12:00:00 GMT; HttpOnly; Secure; SameSite=Lax"],
    ),
    // Java servlet container.
    case("/", &[b"JSESSIONID=8F1A; Path=/shop; Secure"], &[b"JSESSIONID=8F1A; Path=/shop; Secure; HttpOnly; SameSite=Lax"]),
    // Unknown and newer attributes are kept as written, in order.
    case(
        "/",
        &[b"a=b; Partitioned; Priority=High; X-Future=1; Foo"],
        &[b"a=b; Partitioned; Priority=High; X-Future=1; Foo; HttpOnly; Secure; SameSite=Lax"],
    ),
    // Expired / deleted cookies stay deletions.
    case("/", &[b"sid=; Max-Age=0; Path=/"], &[b"sid=; Max-Age=0; Path=/; HttpOnly; Secure; SameSite=Lax"]),
    case(
        "/",
        &[b"sid=deleted; expires=Thu, 01 Jan 1970 00:00:00 GMT"],
        &[b"sid=deleted; expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; Secure; SameSite=Lax"],
    ),
    // SameSite: the stricter of the app's and the route's; written where the app put it.
    case("/", &[b"a=b; SameSite=None; Secure"], &[b"a=b; SameSite=Lax; Secure; HttpOnly"]),
    case("/", &[b"a=b; samesite=strict"], &[b"a=b; SameSite=Strict; HttpOnly; Secure"]),
    case("/", &[b"a=b; SameSite=bogus"], &[b"a=b; SameSite=Lax; HttpOnly; Secure"]),
    case("/", &[b"a=b; SameSite=Strict; Path=/; SameSite=None"], &[b"a=b; SameSite=Lax; Path=/; HttpOnly; Secure"]),
    case("/", &[b"a=b; SameSite"], &[b"a=b; SameSite=Lax; HttpOnly; Secure"]),
    // Odd whitespace and empty attributes.
    case("/", &[b"  a  =  b  ;  Path = /  ;;  Secure  ;"], &[b"a  =  b; Path = /; Secure; HttpOnly; SameSite=Lax"]),
    case("/", &[b"a=b;Path=/;HttpOnly"], &[b"a=b; Path=/; HttpOnly; Secure; SameSite=Lax"]),
    case("/", &[b"a=b\t;\tPath=/"], &[b"a=b; Path=/; HttpOnly; Secure; SameSite=Lax"]),
    // Attribute names are case-insensitive: no duplicates added.
    case("/", &[b"a=b; httponly; SECURE"], &[b"a=b; httponly; SECURE; SameSite=Lax"]),
    // Quotes are not special (RFC 6265bis): the `;` inside splits.
    case("/", &[b"a=\"b;c\"; Path=/"], &[b"a=\"b; c\"; Path=/; HttpOnly; Secure; SameSite=Lax"]),
    case("/", &[b"a=\"quoted value\""], &[b"a=\"quoted value\"; HttpOnly; Secure; SameSite=Lax"]),
    // Values with '=' and empty values.
    case("/", &[b"tok=a=b=c"], &[b"tok=a=b=c; HttpOnly; Secure; SameSite=Lax"]),
    case("/", &[b"empty="], &[b"empty=; HttpOnly; Secure; SameSite=Lax"]),
    // A nameless cookie (no '=') is still a cookie to a browser, so it is hardened.
    case("/", &[b"justvalue"], &[b"justvalue; HttpOnly; Secure; SameSite=Lax"]),
    // Non-UTF-8 bytes pass through untouched.
    case("/", &[b"a=\xe9t\xe9"], &[b"a=\xe9t\xe9; HttpOnly; Secure; SameSite=Lax"]),
    // __Host- cookies keep their shape.
    case("/", &[b"__Host-id=1; Path=/; Secure"], &[b"__Host-id=1; Path=/; Secure; HttpOnly; SameSite=Lax"]),
    // Domain is kept unless the route strips it.
    case("/", &[b"a=b; Domain=example.com"], &[b"a=b; Domain=example.com; HttpOnly; Secure; SameSite=Lax"]),
    // Script-readable cookies keep Secure and SameSite but get no HttpOnly.
    case("/", &[b"XSRF-TOKEN=t0k; Path=/"], &[b"XSRF-TOKEN=t0k; Path=/; Secure; SameSite=Lax"]),
    case("/", &[b"xsrf-token=t0k"], &[b"xsrf-token=t0k; HttpOnly; Secure; SameSite=Lax"]),
    // Several cookies in one response stay separate headers, in order; lines a browser
    // would ignore are dropped without affecting the others.
    case(
        "/",
        &[b"one=1", b"=", b"two=2; Path=/", b" ; Path=/", b"three=3; SameSite=Strict"],
        &[b"one=1; HttpOnly; Secure; SameSite=Lax", b"two=2; Path=/; HttpOnly; Secure; SameSite=Lax", b"three=3; SameSite=Strict; HttpOnly; Secure"],
    ),
    // Strict route.
    case("/strict", &[b"a=b"], &[b"a=b; HttpOnly; Secure; SameSite=Strict"]),
    case("/strict", &[b"a=b; SameSite=Lax"], &[b"a=b; SameSite=Strict; HttpOnly; Secure"]),
    // None route: None is the floor, so the app's stricter choice stays; None forces Secure.
    case("/none", &[b"a=b"], &[b"a=b; HttpOnly; Secure; SameSite=None"]),
    case("/none", &[b"a=b; SameSite=Strict"], &[b"a=b; SameSite=Strict; HttpOnly; Secure"]),
    // strip_domain route.
    case("/nodomain", &[b"a=b; Domain=.example.com; Path=/"], &[b"a=b; Path=/; HttpOnly; Secure; SameSite=Lax"]),
    case("/nodomain", &[b"a=b; domain=x.example"], &[b"a=b; HttpOnly; Secure; SameSite=Lax"]),
];

async fn proxy_for_cases() -> (Upstream, Proxy) {
    let up = Upstream::recording(|seen| {
        let i: usize = seen.headers["x-case"].to_str().unwrap().parse().unwrap();
        let mut resp = text_response(200, "ok");
        for line in CASES[i].app_sends {
            resp.headers_mut()
                .append("set-cookie", HeaderValue::from_bytes(line).unwrap());
        }
        resp
    })
    .await;
    let u = up.url();
    let proxy = Proxy::start(&format!(
        r#"
[[routes]]
upstream = "{u}"
[routes.cookies]
script_readable = ["XSRF-TOKEN"]
[[routes]]
path_prefix = "/strict"
upstream = "{u}"
cookies = {{ same_site = "strict" }}
[[routes]]
path_prefix = "/none"
upstream = "{u}"
cookies = {{ same_site = "none" }}
[[routes]]
path_prefix = "/nodomain"
upstream = "{u}"
cookies = {{ strip_domain = true }}
"#
    ))
    .await;
    (up, proxy)
}

fn show(lines: &[&[u8]]) -> Vec<String> {
    lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

#[tokio::test]
async fn set_cookie_table_over_http1() {
    let (up, proxy) = proxy_for_cases().await;
    let mut h1 = proxy.h1().await;
    for (i, c) in CASES.iter().enumerate() {
        let req = Request::get(c.path)
            .header("host", "localhost")
            .header("x-case", i.to_string())
            .header("cookie", "theme=dark; lang=en")
            .body(full_body(""))
            .unwrap();
        let r = h1.send(req).await;
        assert_eq!(r.status, 200, "case {i}");
        let got: Vec<&[u8]> = r
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(
            show(&got),
            show(c.client_gets),
            "case {i}: app sent {:?}",
            show(c.app_sends)
        );
        let seen = up.last();
        assert_eq!(
            seen.headers["x-case"],
            i.to_string().as_str(),
            "case {i} reached the app"
        );
        assert_eq!(
            seen.headers["cookie"], "theme=dark; lang=en",
            "case {i}: request cookies untouched"
        );
    }
    assert_eq!(up.count(), CASES.len());
}

#[tokio::test]
async fn set_cookie_lines_stay_separate_over_http2() {
    let (_up, proxy) = proxy_for_cases().await;
    let i = CASES.iter().position(|c| c.client_gets.len() == 3).unwrap();
    let mut h2 = proxy.h2().await;
    let req = Request::get("https://localhost/")
        .header("x-case", i.to_string())
        .body(full_body(""))
        .unwrap();
    let r = h2.send(req).await;
    let got: Vec<&[u8]> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    assert_eq!(show(&got), show(CASES[i].client_gets));
}

/// Name/value splitting checked against the public http-state parser cases
/// (tests/data/set_cookie_parser_cases.json), with the RFC 6265bis nameless-cookie rule.
#[test]
fn http_state_parser_cases() {
    let data: serde_json::Value =
        serde_json::from_str(include_str!("data/set_cookie_parser_cases.json")).unwrap();
    let cases = data["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for c in cases {
        let line = c["line"].as_str().unwrap();
        let got = sessiongate::cookies::SetCookie::parse(line.as_bytes());
        match c["expect"].as_object() {
            None => assert!(got.is_err(), "{}: {line:?} should be ignored", c["test"]),
            Some(want) => {
                let got = got.unwrap_or_else(|e| panic!("{}: {line:?} rejected: {e}", c["test"]));
                assert_eq!(
                    (
                        String::from_utf8_lossy(got.name),
                        String::from_utf8_lossy(got.value)
                    ),
                    (
                        want["name"].as_str().unwrap().into(),
                        want["value"].as_str().unwrap().into()
                    ),
                    "{}: {line:?}",
                    c["test"]
                );
            }
        }
    }
}
