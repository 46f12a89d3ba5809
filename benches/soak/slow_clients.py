#!/usr/bin/env python3
"""Slow clients against a running sessiongate: how many it holds, at what memory, and
whether normal clients are still served.

Opens SLOW connections (a third of each kind), each reopened as soon as sessiongate
closes it, the way a slowloris attacker keeps the pressure on:
  - tcp:     connects and sends nothing (not even a TLS ClientHello);
  - headers: completes TLS, then trickles a request head one byte every 2 s;
  - body:    sends a whole form POST head with Content-Length 1 MB, then one body byte
             every 2 s (sessiongate reads forms whole on session routes).
Meanwhile a normal client makes one request a second on a fresh TLS connection (5 s
timeout). Prints one row every 5 s: connections held (sessiongate's
active_connections gauge), RSS, and the normal client's successes, failures and latency.

Environment: PROXY=host:port (TLS), ADMIN=host:port, SG_PID, SLOW (default 3000),
DURATION seconds (default 60), LABEL.
"""
import asyncio
import os
import ssl
import statistics
import sys
import time
import urllib.request

PROXY = os.environ.get("PROXY", "127.0.0.1:18443")
ADMIN = os.environ.get("ADMIN", "127.0.0.1:19090")
SG_PID = int(os.environ["SG_PID"])
SLOW = int(os.environ.get("SLOW", "3000"))
DURATION = float(os.environ.get("DURATION", "60"))
LABEL = os.environ.get("LABEL", "")
HOST, PORT = PROXY.rsplit(":", 1)
PORT = int(PORT)

ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

stats = {"opened": 0, "closed_by_proxy": 0, "refused": 0}
lifetimes = {"tcp": [], "headers": [], "body": []}  # seconds each connection was held
normal = []  # (ok, seconds)


def rss_mib():
    with open(f"/proc/{SG_PID}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def gauge(name):
    try:
        text = urllib.request.urlopen(f"http://{ADMIN}/metrics", timeout=2).read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return -1


async def slow_one(kind, deadline):
    while time.monotonic() < deadline:
        try:
            if kind == "tcp":
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(HOST, PORT), 10)
            else:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(HOST, PORT, ssl=ctx, server_hostname="localhost"), 10)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            stats["refused"] += 1
            await asyncio.sleep(1)
            continue
        stats["opened"] += 1
        opened = time.monotonic()
        if kind == "headers":
            trickle = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 4000
        elif kind == "body":
            # A form on a session route: sessiongate reads it whole (login detection,
            # field stripping), so this one is held by sessiongate, not the app.
            writer.write(b"POST /account HTTP/1.1\r\nHost: localhost\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: 1000000\r\n\r\n")
            trickle = b"b" * 1000000
        else:
            trickle = b""
        try:
            i = 0
            while time.monotonic() < deadline:
                if trickle and i < len(trickle):
                    writer.write(trickle[i:i + 1])
                    i += 1
                    await writer.drain()
                # A closed connection shows as EOF (or an error) on read.
                try:
                    data = await asyncio.wait_for(reader.read(1024), 2)
                    if not data:
                        break
                except asyncio.TimeoutError:
                    pass
            else:
                writer.close()
                return
        except (OSError, ssl.SSLError, ConnectionError):
            pass
        stats["closed_by_proxy"] += 1
        lifetimes[kind].append(time.monotonic() - opened)
        writer.close()


async def normal_client(deadline):
    while time.monotonic() < deadline:
        t = time.monotonic()
        ok = False
        try:
            async def one():
                reader, writer = await asyncio.open_connection(
                    HOST, PORT, ssl=ctx, server_hostname="localhost")
                writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = await reader.read(64)
                writer.close()
                return data.startswith(b"HTTP/1.1 200")
            ok = await asyncio.wait_for(one(), 5)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            ok = False
        normal.append((ok, time.monotonic() - t))
        await asyncio.sleep(max(0.0, 1 - (time.monotonic() - t)))


async def main():
    start = time.monotonic()
    deadline = start + DURATION
    base = rss_mib()
    kinds = ["tcp", "headers", "body"]
    tasks = []
    for i in range(SLOW):
        tasks.append(asyncio.create_task(slow_one(kinds[i % 3], deadline)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # open them over a second or two, not in one burst
    tasks.append(asyncio.create_task(normal_client(deadline)))
    print(f"{LABEL}: {SLOW} slow clients, baseline RSS {base:.1f} MiB")
    print("| t (s) | held | RSS (MiB) | RSS per held conn (KiB) | opened | closed by proxy "
          "| connect failures | normal ok / failed | normal p50 / max (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    peak_per_conn = []
    seen = 0
    while time.monotonic() < deadline - 0.5:
        await asyncio.sleep(5)
        held = gauge("sessiongate_active_connections")
        rss = rss_mib()
        per = (rss - base) * 1024 / held if held > 0 else 0
        if held > 100:
            peak_per_conn.append(per)
        window = normal[seen:]
        seen = len(normal)
        lat = [s * 1000 for ok, s in window if ok]
        okn = sum(1 for ok, _ in window if ok)
        print(f"| {time.monotonic() - start:.0f} | {held:.0f} | {rss:.1f} | {per:.1f} "
              f"| {stats['opened']} | {stats['closed_by_proxy']} | {stats['refused']} "
              f"| {okn} / {len(window) - okn} "
              f"| {statistics.median(lat) if lat else 0:.0f} / {max(lat) if lat else 0:.0f} |",
              flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    okn = sum(1 for ok, _ in normal if ok)
    print(f"summary {LABEL}: normal client {okn}/{len(normal)} ok; "
          f"RSS per held connection {statistics.median(peak_per_conn) if peak_per_conn else 0:.1f} KiB")
    for kind, held in lifetimes.items():
        if held:
            print(f"  {kind}: closed by sessiongate after a median {statistics.median(held):.1f} s "
                  f"(min {min(held):.1f}, max {max(held):.1f}, {len(held)} closes)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
