#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs into tests/fuzz/corpus/<target>/.

Seeds come from the test data (the Set-Cookie parser cases, the shipped configs), from
hand-written attacks on each parser, and from the public smuggling corpus
(../shared/smuggling-corpus/: http-garden and defparam/smuggler payloads), whose request
targets, header values and bodies are fed to the parsers that read them. Run it once
before a fuzzing campaign; the campaign's minimised corpus is what gets committed.

    python3 tests/fuzz/seed.py [path/to/smuggling-corpus]
"""

import hashlib
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
SHARED = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "smuggling-corpus"

VAULT = ["PHPSESSID", "JSESSIONID", "connect.sid", "session", "sessionid"]
# Spellings of a vaulted name that some stack reads as the name itself.
SPELLINGS = [
    "PHPSESSID", "phpsessid", "PHPSESS%49D", "PHPSESSID%00x", "%50HPSESSID", "PHP%2553ESSID",
    " PHPSESSID", "PHPSESSID\u00a0", "php.sessid", "php sessid", "php[sessid", "PHPSESSID\x85",
    "JSESSIONID", "jsessionid", "JSESSIONID%20", "connect.sid", "connect_sid", "connect+sid",
    "session", "SESSION", "sess%69on", "sessionid", "\u017fession", "__Host-sg", "__host-sg",
]


def put(target, data):
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def smuggling_messages():
    """Every raw HTTP/1 message of the public corpus, as bytes."""
    garden = SHARED / "garden.json"
    if garden.exists():
        for case in json.loads(garden.read_text()):
            for part in case.get("parts_hex", []):
                yield bytes.fromhex(part)
    smuggler = SHARED / "smuggler.json"
    if smuggler.exists():
        for case in json.loads(smuggler.read_text()):
            gadget = bytes.fromhex(case["gadget_hex"])
            yield b"POST /login HTTP/1.1\r\nHost: a\r\n" + gadget + b"\r\n\r\n0\r\n\r\n"


def heads(messages):
    """(request target, [header values], body) of each message."""
    for m in messages:
        head, _, body = m.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        request = lines[0].split(b" ")
        target = request[1] if len(request) > 1 else b"/"
        values = [l.partition(b":")[2].strip() for l in lines[1:] if b":" in l]
        yield target, values, body


def main():
    msgs = list(heads(smuggling_messages()))
    for target, values, body in msgs:
        put("canon", target)
        path, _, query = target.partition(b"?")
        put("strip_fields", query or body[:512])
        put("strip_location", target)
        put("cookie_split", b"\n".join(values[:8]))
        put("set_cookie", values[0] if values else b"a=b")
        put("rules", b"POST " + path + b"\n302\nLocation: /account\n\n" + body[:256])

    for name in SPELLINGS:
        put("cookie_split", f"a=1; {name}=planted; b=2")
        put("cookie_split", f"$Version=1; {name}=x")
        put("cookie_split", f'a="b; {name}=c"')
        put("cookie_split", f"a=b,{name}=c\n{name}=d")
        put("set_cookie", f"{name}=abc; Path=/; Domain=example.com; SameSite=None")
        put("vault_capture", f"{name}=v1; Path=/app\nother=1; HttpOnly\n{name}=; Max-Age=0")
        put("strip_fields", f"a=1&{name}=x;b=2&&{name}")
        put("strip_location", f"/app;{name}=x/next;a=b?{name}=y&z=1#{name}=f")
        put("canon", f"/app;{name}=x/../login?{name}=y")
        put("multipart", f"XyZ\n--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\nplanted\r\n--XyZ\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\npw\r\n--XyZ--\r\n")

    cases = json.loads((ROOT / "tests" / "data" / "set_cookie_parser_cases.json").read_text())
    for case in cases["cases"]:
        put("set_cookie", case["line"])
        put("vault_capture", case["line"] + "\nPHPSESSID=" + case["line"])

    for raw in ["/", "/login", "//login", "/l%6Fgin", "/x/%2E%2E/login", "/login;jsessionid=x",
                "/a/..;/login", "/%252e%252e/", "/a%2fb", "/\u00e9t\u00e9", "/a%C3%A9", "/a%ff",
                "/login/.", "/LOGIN/", "/a//b///c/../../login?x=1", "[::1]:8443", "Example.COM.:443",
                "a..b", "host:99999"]:
        put("canon", raw)

    for body in ["username=alice&password=pw", "user%5Bpassword%5D=x", "a=1;pwd=2", ""]:
        put("rules", f"POST /login\n302\nLocation: /account\nSet-Cookie: remember=1\n\n{body}")
        put("rules", f"post /auth/x/\n200\nContent-Type: text/html\n\nWelcome back {body}")
        put("rules", f"GET /Users/Sign_In/\n401\n\nInvalid password {body}")
        put("rules", f"DELETE /logout\n204\n\n{body}")

    put("multipart", "b\n--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\ndata\r\n--b--\r\n")
    put("multipart", "b\n--b\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\nalice\r\n--b\r\nContent-Disposition: form-data; name=user[password]\r\n\r\nx\r\n--b--\r\n")

    for f in [ROOT / "config.toml", *sorted((ROOT / "deploy" / "examples").glob("*.toml"))]:
        put("config", f.read_bytes())
    put("config", "[server]\nplain_listen = \"127.0.0.1:0\"\n[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\n")
    put("config", "[session]\nidle_timeout = \"1s\"\nanonymous_idle_timeout = \"2s\"\n")


if __name__ == "__main__":
    main()
