#!/usr/bin/env python3
"""The client of bench/idle.sh: CONNS keep-alive connections to one proxy, each of which sends one
GET PATH over HTTP/1.1, reads the whole answer (head and body, by Content-Length or chunked), and then
stays open, idle, until SIGTERM (or --max-hold s).

Prints two JSON lines on stdout: the first as soon as every connection is open and answered (or has
failed, or --ramp-max s have passed), {"phase": "ready", "wanted", "opened", "answered_200", "statuses",
"errors", "ramp_s"}; the second when told to stop, {"phase": "done", ..., "closed_by_server"} (how many
the server closed while they were idle). Logs to stderr.

Reuses bench/edge/clients.py (connect, request, raise_nofile, log); Python 3 standard library only.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ left in bench/edge
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "edge"))
from clients import connect, log, raise_nofile, request  # noqa: E402  (bench/edge/clients.py)


async def read_answer(loop, s, timeout):
    """Reads one whole HTTP/1.1 response from socket s; its status."""
    deadline = time.monotonic() + timeout

    async def more():
        left = deadline - time.monotonic()
        if left <= 0:
            raise asyncio.TimeoutError()
        d = await asyncio.wait_for(loop.sock_recv(s, 65536), left)
        if not d:
            raise ConnectionResetError("closed before the answer ended")
        return d

    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += await more()
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split()
    status = parts[1].decode() if len(parts) > 1 else "garbled"
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    if b"content-length" in headers:
        n = int(headers[b"content-length"])
        while len(body) < n:
            body += await more()
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            body += await more()
    return status


async def run(args):
    nofile = raise_nofile()
    if nofile < args.conns + 50:
        log("warning: RLIMIT_NOFILE is %d, fewer than the %d connections need" % (nofile, args.conns))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    sem = asyncio.Semaphore(args.parallel)
    socks, statuses, errors = [], {}, {}
    t0 = time.monotonic()

    async def one():
        async with sem:  # connect, request and answer: at most args.parallel at once
            s = None
            try:
                s = await connect(args.host, args.port, timeout=args.timeout)
                await asyncio.wait_for(loop.sock_sendall(s, request(args.path)), args.timeout)
                st = await read_answer(loop, s, args.timeout)
            except Exception as e:  # noqa: BLE001 - counted by kind
                k = type(e).__name__
                errors[k] = errors.get(k, 0) + 1
                if s is not None:
                    s.close()
                return
            statuses[st] = statuses.get(st, 0) + 1
            socks.append(s)

    tasks = [asyncio.ensure_future(one()) for _ in range(args.conns)]
    _, pending = await asyncio.wait(tasks, timeout=args.ramp_max)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)
        errors["ramp_max"] = errors.get("ramp_max", 0) + len(pending)
    ramp = time.monotonic() - t0
    result = {"phase": "ready", "wanted": args.conns, "opened": len(socks), "answered_200": statuses.get("200", 0),
              "statuses": statuses, "errors": errors, "ramp_s": round(ramp, 1)}
    log("%d of %d connections open and answered after %.1fs (statuses %s, errors %s); idle until told to stop"
        % (len(socks), args.conns, ramp, statuses, errors or "none"))
    print(json.dumps(result), flush=True)

    try:
        await asyncio.wait_for(stop.wait(), args.max_hold)
    except asyncio.TimeoutError:
        pass
    held = time.monotonic() - t0 - ramp
    # How many the server closed while they idled (EOF or reset; a readable socket with data is odd,
    # and counted as open).
    closed = 0
    for s in socks:
        try:
            if not s.recv(65536):
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    for s in socks:
        s.close()
    result.update(phase="done", held_s=round(held, 1), closed_by_server=closed)
    print(json.dumps(result), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/small")
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--parallel", type=int, default=200, help="connections being opened and answered at once")
    p.add_argument("--timeout", type=float, default=10, help="s for one connect, and for one request and its answer")
    p.add_argument("--ramp-max", type=float, default=120, help="s to open them all; those not done by then are given up")
    p.add_argument("--max-hold", type=float, default=600, help="s to stay idle when no SIGTERM comes")
    args = p.parse_args()
    try:
        asyncio.run(run(args))
    except Exception as e:  # noqa: BLE001 - reported as the result
        print(json.dumps({"phase": "error", "error": "%s: %s" % (type(e).__name__, e)}), flush=True)


if __name__ == "__main__":
    main()
