#!/usr/bin/env python3
"""Splits a running proxy's memory per idle connection in two: opens N connections and
reads the proxy's RSS (connections that sent nothing), then sends one keep-alive request
on each, reads every answer's head, waits 2.5 s and reads RSS again. Prints KiB per
connection for both, with Portcullis's /status `connectionsWaiting` when --admin is given.

    python3 bench/idle_probe.py --port 18030 --pid $(pgrep -f portcullis-dataplane) \\
        --admin 127.0.0.1:18039 --connections 3000

Raise the open-file limit first (ulimit -n) for large N.
"""

import argparse
import json
import socket
import time
import urllib.request


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def waiting(admin):
    if not admin:
        return None
    with urllib.request.urlopen(f"http://{admin}/status", timeout=5) as r:
        return json.load(r).get("connectionsWaiting")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--admin", default="")
    ap.add_argument("--host-header", default="localhost")
    ap.add_argument("--connections", type=int, default=3000)
    args = ap.parse_args()
    n = args.connections
    time.sleep(0.5)
    start = rss_kib(args.pid)
    socks = [socket.create_connection(("127.0.0.1", args.port)) for _ in range(n)]
    time.sleep(1.5)
    opened = rss_kib(args.pid)
    print(f"connected, no request: {(opened - start) / n:.2f} KiB/conn, waiting {waiting(args.admin)}")
    req = f"GET / HTTP/1.1\r\nHost: {args.host_header}\r\n\r\n".encode()
    for s in socks:
        s.sendall(req)
    for s in socks:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    time.sleep(2.5)
    after = rss_kib(args.pid)
    print(f"after one request each: {(after - start) / n:.2f} KiB/conn, waiting {waiting(args.admin)}")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
