#!/usr/bin/env python3
"""The clients of bench/edge.sh: abusive ones, the legit loop, the probes and the RSS sampler.

Python 3 standard library only (asyncio on raw sockets). HTTP/2 is spoken in clear text with prior
knowledge (h2c), by hand: the connection preface, SETTINGS, WINDOW_UPDATE, HEADERS whose block is HPACK
"literal without indexing, new name" fields (no Huffman), PING, and just enough frame parsing to see a
response end (END_STREAM, RST_STREAM, GOAWAY, EOF).

Every subcommand prints one JSON object on stdout (its result) and logs to stderr. See `--help`.

  h2flood   row 1: CONNS connections, each STREAMS GETs of PATH with a huge window, never reading
  h1slow    row 2: CONNS HTTP/1.1 GETs of PATH with a small receive buffer, never reading
  idle      row 5: CONNS connections that each send one GET, read its answer, then idle
  badchunk  row 6: COUNT POSTs with a malformed chunked body; the statuses
  upload    row 3: a paced upload of SIZE_MB at RATE_MB/s; its status and when it came
  stall-h1  row 4: GET PATH over HTTP/1.1; seconds until the response ends (or the cap)
  stall-h2  row 4: the same over h2c
  h2ping    row 9: h2c GET PATH, then a PING every EVERY s; seconds until the server closes (or the cap)
  h2check   one h2c GET: the status and body size (a sanity check of each proxy's h2c)
  legit     a GET every INTERVAL s on a new connection, until SIGTERM or COUNT; how many succeeded
  probe     COUNT GETs of PATH (each with ?probe=TAG, to be found in the backends' logs)
  sample    RSS (summed over the process trees of PIDS) and established connections to PORTS,
            every INTERVAL s until SIGTERM; the peak
  rss       the RSS of the process trees of PIDS now (kB)
"""

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import struct
import sys
import time


def log(*a):
    print("[edge-client %s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- h2c by hand
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
MAX_WINDOW = 2**31 - 1


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def settings(**params):
    ids = {"enable_push": 2, "initial_window_size": 4, "max_frame_size": 5}
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", ids[k], v) for k, v in params.items()))


def hpack_int(value, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name, value):
    """Literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    n, v = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v


def h2_get(stream, path, authority="localhost", method="GET", end_stream=True):
    block = b"".join(hpack_literal(k, v) for k, v in
                     ((":method", method), (":scheme", "http"), (":path", path), (":authority", authority)))
    return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream, block)


def h2_open(big_window=True):
    """The client's opening bytes: preface, SETTINGS (huge initial window, no push), WINDOW_UPDATE."""
    out = PREFACE
    if big_window:
        out += settings(enable_push=0, initial_window_size=MAX_WINDOW)
        out += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535))
    else:
        out += settings(enable_push=0)
    return out


STATIC_STATUS = {8: "200", 9: "204", 10: "206", 11: "304", 12: "400", 13: "404", 14: "500"}


def h2_status(block):
    """The :status of a response header block, when it is its first field and readable without a table."""
    if not block:
        return "?"
    b = block[0]
    if b & 0x80:
        return STATIC_STATUS.get(b & 0x7F, "?")
    if (b & 0xC0) == 0x40:
        idx, rest = b & 0x3F, block[1:]
    elif (b & 0xF0) in (0x00, 0x10):
        idx, rest = b & 0x0F, block[1:]
    else:
        return "?"
    if idx in range(8, 15) and rest and not rest[0] & 0x80:
        n = rest[0] & 0x7F
        return rest[1:1 + n].decode(errors="replace")
    return "?"


class H2Reader:
    """Reads frames from an asyncio stream, answering SETTINGS and PING as a client must."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    async def next(self):
        head = await self.r.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        ftype, flags = head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await self.r.readexactly(length) if length else b""
        if ftype == SETTINGS and not flags & ACK:
            self.w.write(frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK:
            self.w.write(frame(PING, ACK, 0, payload))
        elif ftype == DATA and length:
            # Give the window back, so that a long body is not held by flow control.
            self.w.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", length)) +
                         frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", length)))
        return ftype, flags, stream, payload


async def h2_response(h2, stream_id):
    """Reads until stream_id ends: (status, body bytes, how it ended)."""
    status, body = "?", 0
    while True:
        ftype, flags, stream, payload = await h2.next()
        if ftype == GOAWAY:
            return status, body, "goaway"
        if stream != stream_id:
            continue
        if ftype == HEADERS:
            if status == "?":
                pad = payload[0] if flags & 0x8 else 0
                start = (1 if flags & 0x8 else 0) + (5 if flags & 0x20 else 0)
                status = h2_status(payload[start:len(payload) - pad])
            if flags & END_STREAM:
                return status, body, "end_stream"
        elif ftype == DATA:
            body += len(payload) - ((payload[0] + 1) if flags & 0x8 and payload else 0)
            if flags & END_STREAM:
                return status, body, "end_stream"
        elif ftype == RST_STREAM:
            return status, body, "rst_stream"


# ---------------------------------------------------------------- plain connections
async def connect(host, port, rcvbuf=None, timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, (host, port)), timeout)
    except BaseException:
        s.close()
        raise
    return s


def request(path, host="localhost", extra=""):
    return ("GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path, host, extra)).encode()


async def hold_many(args, opener):
    """Opens args.conns connections with opener(i, sem) -> socket (which holds sem while it connects
    and sends: at most args.parallel at once; those not open after args.ramp_max s are given up), holds them args.hold seconds, closes them. Reports how many opened and how many failed."""
    raise_nofile()
    sem = asyncio.Semaphore(args.parallel)
    socks, errors = [], {}
    t0 = time.monotonic()

    async def one(i):
        try:
            socks.append(await opener(i, sem))
        except Exception as e:  # noqa: BLE001 - counted by kind
            k = type(e).__name__
            errors[k] = errors.get(k, 0) + 1

    tasks = [asyncio.ensure_future(one(i)) for i in range(args.conns)]
    _, pending = await asyncio.wait(tasks, timeout=args.ramp_max)
    for t in pending:  # still connecting when the ramp's time is up: given up
        t.cancel()
    if pending:
        await asyncio.wait(pending)
        errors["ramp_max"] = len(pending)
    ramp = time.monotonic() - t0
    log("%d of %d connections open after %.1fs (errors: %s); holding %ss" % (len(socks), args.conns, ramp, errors or "none", args.hold))
    await asyncio.sleep(args.hold)
    # How many the server closed meanwhile (a readable socket with nothing to read: EOF; reset: error).
    closed = 0
    for s in socks:
        try:
            for _ in range(4):  # sockets with much unread data are counted as open
                d = s.recv(1 << 16)
                if not d:
                    closed += 1
                    break
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    for s in socks:
        s.close()
    return {"opened": len(socks), "wanted": args.conns, "errors": errors, "ramp_s": round(ramp, 1),
            "closed_by_server": closed}


async def cmd_h2flood(args):
    async def opener(i, sem):
        async with sem:
            s = await connect(args.host, args.port)
            loop = asyncio.get_running_loop()
            out = h2_open(big_window=True)
            out += b"".join(h2_get(1 + 2 * k, args.path) for k in range(args.streams))
            await asyncio.wait_for(loop.sock_sendall(s, out), 5)
            return s
    return await hold_many(args, opener)


async def cmd_h1slow(args):
    async def opener(i, sem):
        async with sem:
            s = await connect(args.host, args.port, rcvbuf=args.rcvbuf)
            await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(s, request(args.path)), 5)
            return s
    return await hold_many(args, opener)


async def cmd_idle(args):
    async def opener(i, sem):
        loop = asyncio.get_running_loop()
        async with sem:  # the connect and the request; the answer is awaited outside
            s = await connect(args.host, args.port, timeout=args.connect_timeout)
            await asyncio.wait_for(loop.sock_sendall(s, request(args.path)), 5)
        try:  # the answer (small), then idle
            await asyncio.wait_for(loop.sock_recv(s, 65536), 5)
        except asyncio.TimeoutError:
            pass
        return s
    return await hold_many(args, opener)


async def read_status(reader, timeout):
    line = await asyncio.wait_for(reader.readline(), timeout)
    if not line:
        return "closed"
    parts = line.split()
    return parts[1].decode() if len(parts) > 1 else "garbled"


async def cmd_badchunk(args):
    statuses = {}
    body = b"zz\r\nhello\r\n0\r\n\r\n"  # "zz" is no chunk size
    for i in range(args.count):
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(args.host, args.port), 5)
            w.write(("POST %s HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Type: text/plain\r\n\r\n" % args.path).encode() + body)
            await w.drain()
            st = await read_status(r, args.timeout)
            w.close()
        except asyncio.TimeoutError:
            st = "timeout"
        except (ConnectionError, OSError) as e:
            st = type(e).__name__
        statuses[st] = statuses.get(st, 0) + 1
    return {"statuses": statuses, "count": args.count}


async def cmd_upload(args):
    size = int(args.size_mb * (1 << 20))
    chunk = b"x" * (256 << 10)
    t0 = time.monotonic()
    r, w = await asyncio.wait_for(asyncio.open_connection(args.host, args.port), 5)
    w.write(("POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\nContent-Type: application/octet-stream\r\n\r\n"
             % (args.path, size)).encode())
    answer = asyncio.ensure_future(read_status(r, args.cap))
    sent = 0
    try:
        while sent < size and not answer.done():
            n = min(len(chunk), size - sent)
            w.write(chunk[:n])
            await asyncio.wait_for(w.drain(), args.cap)
            sent += n
            ahead = sent / (args.rate_mb * (1 << 20)) - (time.monotonic() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
    except (ConnectionError, OSError, asyncio.TimeoutError) as e:
        log("upload stopped after %d bytes: %s" % (sent, type(e).__name__))
    upload_s = time.monotonic() - t0
    try:
        st = await asyncio.wait_for(answer, max(1.0, args.cap - (time.monotonic() - t0)))
    except asyncio.TimeoutError:
        st = "timeout"
    except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
        st = type(e).__name__
    w.close()
    return {"status": st, "answered_s": round(time.monotonic() - t0, 1), "upload_s": round(upload_s, 1),
            "sent_mb": round(sent / (1 << 20), 1), "size_mb": args.size_mb}


async def cmd_stall_h1(args):
    t0 = time.monotonic()
    r, w = await asyncio.wait_for(asyncio.open_connection(args.host, args.port), 5)
    w.write(request(args.path))
    await w.drain()
    got, how = 0, "cap"
    try:
        while True:
            d = await asyncio.wait_for(r.read(65536), max(0.1, args.cap - (time.monotonic() - t0)))
            if not d:
                how = "eof"
                break
            got += len(d)
    except asyncio.TimeoutError:
        how = "cap"
    except (ConnectionError, OSError) as e:
        how = type(e).__name__
    w.close()
    return {"ended_s": round(time.monotonic() - t0, 1), "how": how, "bytes": got, "cap_s": args.cap}


async def cmd_stall_h2(args):
    t0 = time.monotonic()
    r, w = await asyncio.wait_for(asyncio.open_connection(args.host, args.port), 5)
    w.write(h2_open(big_window=False) + h2_get(1, args.path))
    await w.drain()
    h2 = H2Reader(r, w)
    try:
        status, body, how = await asyncio.wait_for(h2_response(h2, 1), args.cap)
    except asyncio.TimeoutError:
        status, body, how = "?", -1, "cap"
    except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
        status, body, how = "?", -1, "eof" if isinstance(e, asyncio.IncompleteReadError) else type(e).__name__
    w.close()
    return {"ended_s": round(time.monotonic() - t0, 1), "how": how, "status": status, "cap_s": args.cap}


async def cmd_h2ping(args):
    r, w = await asyncio.wait_for(asyncio.open_connection(args.host, args.port), 5)
    w.write(h2_open(big_window=False) + h2_get(1, args.path))
    await w.drain()
    h2 = H2Reader(r, w)
    status, body, how = await asyncio.wait_for(h2_response(h2, 1), 10)
    t0 = time.monotonic()
    pings = 0

    async def pinger():
        nonlocal pings
        while True:
            await asyncio.sleep(args.every)
            w.write(frame(PING, 0, 0, struct.pack(">Q", pings)))
            await w.drain()
            pings += 1

    ping_task = asyncio.ensure_future(pinger())
    ended = "cap"
    try:
        async def until_closed():
            while True:
                ftype, _, _, _ = await h2.next()
                if ftype == GOAWAY:
                    return "goaway"
        ended = await asyncio.wait_for(until_closed(), args.cap)
    except asyncio.TimeoutError:
        ended = "cap"
    except asyncio.IncompleteReadError:
        ended = "eof"
    except (ConnectionError, OSError) as e:
        ended = type(e).__name__
    ping_task.cancel()
    w.close()
    return {"closed_s": round(time.monotonic() - t0, 1), "how": ended, "pings": pings, "first_status": status,
            "cap_s": args.cap}


async def cmd_h2check(args):
    r, w = await asyncio.wait_for(asyncio.open_connection(args.host, args.port), 5)
    w.write(h2_open(big_window=True) + h2_get(1, args.path))
    await w.drain()
    status, body, how = await asyncio.wait_for(h2_response(H2Reader(r, w), 1), 10)
    w.close()
    return {"status": status, "body": body, "how": how}


async def one_get(host, port, path, timeout):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except asyncio.TimeoutError:
        return "connect-timeout"
    except OSError as e:
        return "connect-" + type(e).__name__
    try:
        w.write(request(path, extra="Connection: close\r\n"))
        await w.drain()
        data = await asyncio.wait_for(r.read(), timeout)
        st = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.") else ("closed" if not data else "garbled")
        if st == "200" and not data.endswith(b"\n"):
            st = "200-short"
        return st
    except asyncio.TimeoutError:
        return "timeout"
    except (ConnectionError, OSError) as e:
        return type(e).__name__
    finally:
        w.close()


async def cmd_legit(args):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    results, tasks = {}, []

    async def one():
        st = await one_get(args.host, args.port, args.path, args.timeout)
        results[st] = results.get(st, 0) + 1

    t0 = time.monotonic()
    while len(tasks) < args.count and not stop.is_set():
        tasks.append(asyncio.ensure_future(one()))
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, t0 + len(tasks) * args.interval - time.monotonic()))
        except asyncio.TimeoutError:
            pass
    if tasks:
        await asyncio.wait(tasks, timeout=args.timeout + 1)
    done = sum(results.values())
    return {"sent": len(tasks), "ok": results.get("200", 0), "answers": results, "unfinished": len(tasks) - done}


async def cmd_probe(args):
    results = {}
    for i in range(args.count):
        st = await one_get(args.host, args.port, "%s?probe=%s-%d" % (args.path, args.tag, i), args.timeout)
        results[st] = results.get(st, 0) + 1
    return {"answers": results}


# ---------------------------------------------------------------- memory and connections
def tree_pids(roots):
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        todo.extend(children.get(p, ()))
    return out


def rss_kb(roots):
    total = 0
    for p in tree_pids(roots):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def established_to(ports):
    """Established TCP connections (IPv4) whose remote port is one of ports."""
    want = {"%04X" % p for p in ports}
    n = 0
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split(None, 4)
                if parts[3] == "01" and parts[2].rsplit(":", 1)[1] in want:
                    n += 1
    except OSError:
        pass
    return n


async def cmd_sample(args):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    peak_rss = peak_conns = 0
    n = 0
    while not stop.is_set() and n < args.max_samples:
        peak_rss = max(peak_rss, rss_kb(args.pids))
        if args.ports:
            peak_conns = max(peak_conns, established_to(args.ports))
        n += 1
        try:
            await asyncio.wait_for(stop.wait(), args.interval)
        except asyncio.TimeoutError:
            pass
    return {"peak_rss_kb": peak_rss, "peak_backend_conns": peak_conns, "samples": n}


async def cmd_rss(args):
    return {"rss_kb": rss_kb(args.pids)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    sub = p.add_subparsers(dest="cmd", required=True)

    def flood(name, path):
        s = sub.add_parser(name)
        s.add_argument("--path", default=path)
        s.add_argument("--conns", type=int, default=100)
        s.add_argument("--hold", type=float, default=15)
        s.add_argument("--parallel", type=int, default=200, help="connections being opened at once")
        s.add_argument("--ramp-max", type=float, default=60, help="s to open them; those not open by then are given up")
        return s

    s = flood("h2flood", "/big")
    s.add_argument("--streams", type=int, default=200)
    s = flood("h1slow", "/big")
    s.add_argument("--rcvbuf", type=int, default=4096)
    s = flood("idle", "/small")
    s.add_argument("--connect-timeout", type=float, default=5)
    s = sub.add_parser("badchunk")
    s.add_argument("--path", default="/post")
    s.add_argument("--count", type=int, default=20)
    s.add_argument("--timeout", type=float, default=10)
    s = sub.add_parser("upload")
    s.add_argument("--path", default="/upload")
    s.add_argument("--size-mb", type=float, default=300)
    s.add_argument("--rate-mb", type=float, default=50)
    s.add_argument("--cap", type=float, default=60)
    for name in ("stall-h1", "stall-h2"):
        s = sub.add_parser(name)
        s.add_argument("--path", default="/stall")
        s.add_argument("--cap", type=float, default=75)
    s = sub.add_parser("h2ping")
    s.add_argument("--path", default="/small")
    s.add_argument("--every", type=float, default=20)
    s.add_argument("--cap", type=float, default=90)
    s = sub.add_parser("h2check")
    s.add_argument("--path", default="/small")
    s = sub.add_parser("legit")
    s.add_argument("--path", default="/small")
    s.add_argument("--interval", type=float, default=0.05)
    s.add_argument("--count", type=int, default=100000)
    s.add_argument("--timeout", type=float, default=5)
    s = sub.add_parser("probe")
    s.add_argument("--path", default="/small")
    s.add_argument("--tag", default="p")
    s.add_argument("--count", type=int, default=20)
    s.add_argument("--timeout", type=float, default=5)
    s = sub.add_parser("sample")
    s.add_argument("--pids", type=int, nargs="+", required=True)
    s.add_argument("--ports", type=int, nargs="*", default=[])
    s.add_argument("--interval", type=float, default=1)
    s.add_argument("--max-samples", type=int, default=3600)
    s = sub.add_parser("rss")
    s.add_argument("--pids", type=int, nargs="+", required=True)

    args = p.parse_args()
    fn = globals()["cmd_" + args.cmd.replace("-", "_")]
    try:
        out = asyncio.run(fn(args))
    except Exception as e:  # noqa: BLE001 - reported as the result
        out = {"error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
