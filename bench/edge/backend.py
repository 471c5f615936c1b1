#!/usr/bin/env python3
"""The helper backend of bench/edge.sh (Python 3 standard library, asyncio), on each of --ports:

  GET /stall     row 4: a head with Content-Length: 1000 and 10 bytes of it, then nothing (the connection
                 stays open until the peer closes it)
  POST /upload   row 3: reads the whole body (Content-Length or chunked), then 200 "got <bytes>";
                 a malformed chunked body: 400
  anything else  200 "ok\\n" (the probes and health checks)

HTTP/1.1 keep-alive. One line per request in --log: "<port> <method> <target> <status>".
"""

import argparse
import asyncio
import sys

LOG = None


def note(port, method, target, status):
    LOG.write("%d %s %s %s\n" % (port, method, target, status))
    LOG.flush()


def answer(status, body, reason="OK"):
    return ("HTTP/1.1 %d %s\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n" % (status, reason, len(body))).encode() + body


async def read_body(reader, headers):
    """Reads (and discards) a request body; its size, or None when its chunked framing is malformed."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        total = 0
        while True:
            line = await reader.readline()
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return total
            while size:
                d = await reader.read(min(size, 1 << 20))
                if not d:
                    return None
                size -= len(d)
                total += len(d)
            await reader.readline()
    n = int(headers.get("content-length", "0") or 0)
    left = n
    while left:
        d = await reader.read(min(left, 1 << 20))
        if not d:
            break
        left -= len(d)
    return n - left


async def serve(reader, writer, port):
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            parts = line.decode(errors="replace").split()
            if len(parts) < 2:
                return
            method, target = parts[0], parts[1]
            headers = {}
            while True:
                h = await reader.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.decode(errors="replace").partition(":")
                headers[k.strip().lower()] = v.strip()
            path = target.split("?", 1)[0]
            if path == "/stall":
                note(port, method, target, "stall")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n" + b"0123456789")
                await writer.drain()
                while await reader.read(65536):  # until the peer goes
                    pass
                return
            size = await read_body(reader, headers)
            if size is None:
                note(port, method, target, 400)
                writer.write(answer(400, b"bad chunked body\n", "Bad Request"))
                await writer.drain()
                return
            body = ("got %d\n" % size).encode() if path == "/upload" else b"ok\n"
            note(port, method, target, 200)
            writer.write(answer(200, body))
            await writer.drain()
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main():
    global LOG
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ports", type=int, nargs="+", required=True)
    p.add_argument("--log", required=True)
    args = p.parse_args()
    LOG = open(args.log, "a")
    servers = []
    for port in args.ports:
        servers.append(await asyncio.start_server(lambda r, w, port=port: serve(r, w, port), "127.0.0.1", port,
                                                  backlog=4096, limit=1 << 16))
    print("listening on %s" % args.ports, file=sys.stderr, flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
