#!/usr/bin/env python3
"""The soak's mixed load and sampler (run by benches/soak/soak.sh; stdlib only).

Users sign in, browse, and sign out in a loop (their IDs rotate periodically:
rotate_interval is short in the soak config); anonymous visitors arrive without cookies;
between FLOOD_START and FLOOD_END the shell script runs a wrk flood of cookie-less
visitors. Every SAMPLE seconds one row: RSS, open file descriptors, tokio tasks, and
the counters that matter. At the end: a verdict on memory and on error answers.
"""

import http.client
import os
import re
import ssl
import sys
import threading
import time
import urllib.request

PROXY = os.environ.get("PROXY", "127.0.0.1:8443")
ADMIN = os.environ.get("ADMIN", "127.0.0.1:9090")
PID = int(os.environ["SG_PID"])
DURATION = int(os.environ.get("DURATION", "600"))
FLOOD_START = int(os.environ.get("FLOOD_START", "240"))
FLOOD_END = int(os.environ.get("FLOOD_END", "360"))
SAMPLE = int(os.environ.get("SAMPLE", "10"))
WARMUP = int(os.environ.get("WARMUP", "60"))
USERS = [("alice", "wonderland"), ("mallory", "evil")] * 2

TLS = ssl.create_default_context()
TLS.check_hostname = False
TLS.verify_mode = ssl.CERT_NONE

lock = threading.Lock()
statuses = {}
failures = []
stop = threading.Event()


def count(status):
    with lock:
        statuses[status] = statuses.get(status, 0) + 1


def request(conn, method, path, cookies, body=None):
    headers = {"Host": "localhost"}
    if cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    resp.read()
    for v in resp.headers.get_all("Set-Cookie") or []:
        pair = v.split(";", 1)[0]
        name, _, value = pair.partition("=")
        if "max-age=0" in v.lower() or value == "":
            cookies.pop(name, None)
        else:
            cookies[name] = value
    count(resp.status)
    return resp.status


def user_loop(name, password):
    while not stop.is_set():
        try:
            conn = http.client.HTTPSConnection(PROXY, context=TLS, timeout=10)
            jar = {}
            request(conn, "GET", "/login", jar)
            status = request(conn, "POST", "/login", jar, f"username={name}&password={password}")
            if status != 302:
                failures.append(f"login answered {status}")
            for _ in range(20):
                if request(conn, "GET", "/account", jar) != 200:
                    failures.append("a signed-in page was not served")
                time.sleep(0.05)
            request(conn, "POST", "/logout", jar, "")
            conn.close()
        except Exception as e:  # a dropped connection is an error answer too
            failures.append(f"{name}: {e!r}")
            time.sleep(0.5)


def visitor_loop():
    while not stop.is_set():
        try:
            conn = http.client.HTTPSConnection(PROXY, context=TLS, timeout=10)
            request(conn, "GET", "/", {})
            conn.close()
        except Exception as e:
            failures.append(f"visitor: {e!r}")
        time.sleep(0.1)


def rss_kib():
    with open(f"/proc/{PID}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def metrics():
    text = urllib.request.urlopen(f"http://{ADMIN}/metrics", timeout=5).read().decode()
    def total(name, label=""):
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                   if l.startswith(name) and label in l)
    return {
        "tasks": total("sessiongate_tokio_tasks"),
        "created": total("sessiongate_sessions_created_total"),
        "rotated": total("sessiongate_sessions_rotated_total"),
        "evicted": total("sessiongate_sessions_evicted_total"),
        "429": total("sessiongate_sessions_refused_total", 'reason="rate"'),
        "503": total("sessiongate_sessions_refused_total", 'reason="full"'),
        "5xx": total("sessiongate_requests_total", 'status_class="5xx"'),
    }


def main():
    threads = [threading.Thread(target=user_loop, args=u, daemon=True) for u in USERS]
    threads += [threading.Thread(target=visitor_loop, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    start = time.time()
    rows = []
    print("| t (s) | phase | RSS (MiB) | fds | tokio tasks | sessions created | rotations | evicted | 429 | 503 | 5xx | client failures |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    while (t := time.time() - start) < DURATION:
        time.sleep(SAMPLE)
        t = int(time.time() - start)
        phase = "flood" if FLOOD_START <= t < FLOOD_END else ("warm-up" if t < WARMUP else "mixed")
        m = metrics()
        fds = len(os.listdir(f"/proc/{PID}/fd"))
        row = (t, phase, rss_kib() / 1024, fds, m)
        rows.append(row)
        print(f"| {t} | {phase} | {row[2]:.1f} | {fds} | {m['tasks']:.0f} | {m['created']:.0f} | "
              f"{m['rotated']:.0f} | {m['evicted']:.0f} | {m['429']:.0f} | {m['503']:.0f} | {m['5xx']:.0f} | {len(failures)} |",
              flush=True)
    stop.set()

    steady = [r[2] for r in rows if WARMUP <= r[0] < FLOOD_START]
    after = [r[2] for r in rows if r[0] >= FLOOD_END + 60]
    peak = max(r[2] for r in rows)
    ok = True
    if steady:
        spread = (max(steady) - min(steady)) / min(steady)
        print(f"\nsteady RSS (after warm-up, before the flood): {min(steady):.1f}-{max(steady):.1f} MiB, spread {spread:.1%} (limit 10%)")
        ok &= spread <= 0.10
    if after and steady:
        print(f"peak {peak:.1f} MiB in the flood; {after[-1]:.1f} MiB at the end (steady {max(steady):.1f})")
    unexpected = {s: n for s, n in statuses.items() if s not in (200, 302, 429, 503)}
    print(f"answers seen by users and visitors: {dict(sorted(statuses.items()))}")
    if unexpected or failures:
        print(f"UNEXPECTED: statuses {unexpected}, {len(failures)} failures, first: {failures[:3]}")
        ok = False
    print("verdict:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
