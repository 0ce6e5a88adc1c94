#!/usr/bin/env python3
"""Open N keep-alive HTTP/1.1 client connections to a proxy, send one request on each,
read the whole response, then keep every connection open and idle.

Prints one JSON line {"event": "ready", ...} once every connection has its response,
then waits until stdin closes (or SIGTERM) and prints {"event": "done", ...} with how
many connections the peer had closed meanwhile. bench.py reads the proxy's memory
between the two.
"""

import argparse
import asyncio
import json
import resource
import sys
import time


async def one(host, port, host_header, sem, conns, failures):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=30
            )
            writer.write(
                f"GET / HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: bench-idle\r\n\r\n".encode()
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
            status = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await asyncio.wait_for(reader.readexactly(length), timeout=30)
            if status != b"200":
                failures.append(f"status {status.decode(errors='replace')}")
            conns.append((reader, writer))
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            failures.append(f"{type(e).__name__}: {e}")


async def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host-header", default="localhost")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="connections being opened at once (keeps the proxy's upstream pool small)",
    )
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 256
    if soft < need:
        if hard < need:
            sys.exit(f"idle_conns: need {need} open files, hard limit is {hard} (raise ulimit -n)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    sem = asyncio.Semaphore(args.concurrency)
    conns, failures = [], []
    started = time.monotonic()
    await asyncio.gather(
        *(one(args.host, args.port, args.host_header, sem, conns, failures)
          for _ in range(args.connections))
    )
    print(
        json.dumps(
            {
                "event": "ready",
                "open": len(conns),
                "failed": len(failures),
                "first_failures": failures[:5],
                "seconds": round(time.monotonic() - started, 2),
            }
        ),
        flush=True,
    )

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)

    closed_by_peer = sum(1 for reader, _ in conns if reader.at_eof())
    for _, writer in conns:
        writer.close()
    print(json.dumps({"event": "done", "closed_by_peer": closed_by_peer}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
