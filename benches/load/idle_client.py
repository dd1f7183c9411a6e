#!/usr/bin/env python3
"""Idle keep-alive TLS connections against one proxy, and what they cost it in RSS.

Used by benches/load/idle.sh. Opens N connections to 127.0.0.1:PORT, each
makes one authorised GET (HTTP/1.1 keep-alive, or HTTP/2 with one stream
written by hand: preface, SETTINGS, one HEADERS frame), then holds them idle
(answering HTTP/2 PINGs, as a live client does), waits for the proxy's RSS to
settle, reads it, and closes them all. RSS is summed over PID and its child
processes (nginx's workers). Prints one tab-separated line:

    proto  rss_before_kib  rss_after_kib  opened  still_open_at_reading  seconds_to_open

IDLE_AT_HOLD=command runs that shell command while the connections are held
(idle_massif.sh takes its heap snapshot so).

Standard library only (asyncio + ssl). Bounded in time: every step has a
deadline (IDLE_DEADLINE seconds for the whole run).
"""

import asyncio
import os
import ssl
import struct
import sys
import time

HOST = "127.0.0.1"
CONCURRENT_OPENS = 64


def rss_kib(pid):
    """VmRSS of pid plus its direct children (nginx's master and workers)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # ppid is the 2nd field after the ")" that closes the command name.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            pids.append(int(entry))
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def hpack_literal(name_index, value):
    """A literal header field without indexing, name from the static table, no Huffman."""
    v = value.encode()
    out = bytearray()
    # 0000xxxx: literal without indexing, 4-bit prefix name index.
    if name_index < 15:
        out.append(name_index)
    else:
        out.append(15)
        n = name_index - 15
        while n >= 128:
            out.append((n % 128) + 128)
            n //= 128
        out.append(n)
    # Value length, 7-bit prefix, no Huffman.
    if len(v) < 127:
        out.append(len(v))
    else:
        out.append(127)
        n = len(v) - 127
        while n >= 128:
            out.append((n % 128) + 128)
            n //= 128
        out.append(n)
    return bytes(out) + v


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


class Conn:
    def __init__(self):
        self.reader = None
        self.writer = None
        self.open = False
        self.task = None


async def read_frame(reader):
    head = await reader.readexactly(9)
    length = int.from_bytes(head[:3], "big")
    payload = await reader.readexactly(length) if length else b""
    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload


async def h2_request(conn, path, auth):
    w, r = conn.writer, conn.reader
    block = (
        b"\x82"  # :method GET (static 2)
        + b"\x87"  # :scheme https (static 7)
        + hpack_literal(4, path)  # :path
        + hpack_literal(1, f"{HOST}")  # :authority
        + hpack_literal(23, auth)  # authorization
    )
    w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, block))
    await w.drain()
    status = None
    while True:
        ftype, flags, stream, payload = await read_frame(r)
        if ftype == 4 and not flags & 1:  # SETTINGS: acknowledge
            w.write(frame(4, 1, 0))
        elif ftype == 6 and not flags & 1:  # PING: answer
            w.write(frame(6, 1, 0, payload))
        elif ftype == 7:  # GOAWAY
            raise ConnectionError("GOAWAY before the answer")
        elif stream == 1 and ftype == 1:
            # :status 200 is static index 8 (0x88), the usual encoding.
            status = 200 if payload[:1] == b"\x88" else payload[:4]
            if flags & 1:
                break
        elif stream == 1 and ftype == 0 and flags & 1:
            break
        elif stream == 1 and ftype == 3:
            raise ConnectionError("stream reset")
    await w.drain()
    if status != 200:
        raise ConnectionError(f"HTTP/2 status {status!r}")


async def h2_hold(conn):
    """Answers PINGs until the connection closes."""
    try:
        while True:
            ftype, flags, _, payload = await read_frame(conn.reader)
            if ftype == 6 and not flags & 1:
                conn.writer.write(frame(6, 1, 0, payload))
            elif ftype == 7:
                break
    except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError):
        pass
    finally:
        conn.open = False


async def h1_request(conn, path, auth):
    w, r = conn.writer, conn.reader
    w.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {auth}\r\n\r\n".encode())
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if lines[0].split()[1] != "200":
        raise ConnectionError(lines[0])
    length = None
    chunked = False
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.lower() == "content-length":
            length = int(v)
        elif k.lower() == "transfer-encoding" and "chunked" in v.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
            await r.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await r.readexactly(length)


async def h1_hold(conn):
    try:
        while await conn.reader.read(4096):
            pass
    except (ConnectionError, OSError, ssl.SSLError):
        pass
    finally:
        conn.open = False


async def open_one(proto, port, ctx, path, auth, sem, conns, errors):
    async with sem:
        conn = Conn()
        try:
            conn.reader, conn.writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, port, ssl=ctx, server_hostname="localhost"), 30
            )
            if proto == "h2":
                if conn.writer.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
                    raise ConnectionError("h2 not negotiated")
                await asyncio.wait_for(h2_request(conn, path, auth), 30)
                conn.open = True
                conn.task = asyncio.ensure_future(h2_hold(conn))
            else:
                await asyncio.wait_for(h1_request(conn, path, auth), 30)
                conn.open = True
                conn.task = asyncio.ensure_future(h1_hold(conn))
            conns.append(conn)
        except Exception as e:  # counted, the first few shown
            errors.append(repr(e))
            if conn.writer is not None:
                conn.writer.transport.abort()


async def settle(pid, limit):
    """Reads RSS until two readings 1 s apart differ by under 0.2 %, at most `limit` s."""
    last = rss_kib(pid)
    end = time.monotonic() + limit
    while time.monotonic() < end:
        await asyncio.sleep(1)
        now = rss_kib(pid)
        if abs(now - last) <= last * 0.002:
            return now
        last = now
    return last


async def main():
    proto, port, pid, n, cafile, auth = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
    path = os.environ.get("IDLE_PATH", "/iwc/api/databases")
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["h2"] if proto == "h2" else ["http/1.1"])
    sem = asyncio.Semaphore(CONCURRENT_OPENS)

    # Warm-up: a few connections, each one request, closed, so the upstream
    # pool and the proxy's lazily built state exist before the first reading.
    conns, errors = [], []
    await asyncio.gather(*(open_one(proto, port, ctx, path, auth, sem, conns, errors) for _ in range(32)))
    for c in conns:
        c.writer.transport.abort()
    if errors:
        print(f"warm-up failed: {errors[:3]}", file=sys.stderr)
        sys.exit(1)
    await asyncio.sleep(1)
    before = await settle(pid, 10)

    conns, errors = [], []
    t0 = time.monotonic()
    await asyncio.gather(*(open_one(proto, port, ctx, path, auth, sem, conns, errors) for _ in range(n)))
    opened = time.monotonic() - t0
    if errors:
        print(f"{len(errors)} of {n} connections failed, e.g. {errors[:3]}", file=sys.stderr)
    await asyncio.sleep(2)
    after = await settle(pid, 20)
    still = sum(1 for c in conns if c.open)
    hook = os.environ.get("IDLE_AT_HOLD")
    if hook:
        # While the connections are held: e.g. a heap snapshot (idle_massif.sh).
        proc = await asyncio.create_subprocess_shell(hook)
        await asyncio.wait_for(proc.wait(), 120)
    for c in conns:
        c.writer.transport.abort()
        if c.task:
            c.task.cancel()
    await asyncio.sleep(0.5)
    print(f"{proto}\t{before}\t{after}\t{len(conns)}\t{still}\t{opened:.1f}")


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), float(os.environ.get("IDLE_DEADLINE", "300"))))
