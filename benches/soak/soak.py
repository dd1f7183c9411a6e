#!/usr/bin/env python3
"""The Python parts of the soak run (benches/soak.sh), standard library plus
the `h2` package (already pinned for tests/attacks/):

  soak.py slow-upstream PORT
      the upstream's slow half (nginx hands it /iwc/api/slow): ?ms=N answers
      after N ms, ?drip=N sends N chunks 200 ms apart.

  soak.py clients OUT PORT CAFILE POOL SECONDS
      the clients wrk and h2load cannot be: slow ones (request headers and
      bodies byte by byte, HTTP/1.1 and HTTP/2, below the gateway's
      timeouts), idle ones (silent TLS connections, HTTP/1.1 and HTTP/2, and
      silent TCP connections that never start TLS), and ones that make the
      upstream slow (late answers, dripped bodies, answers after
      upstream.response_timeout, clients that give up mid-wait). Stops by
      itself after SECONDS; writes OUT/clients.json.

  soak.py report OUT SECONDS
      the samples table, request counts by kind and the verdict; exit 1 when
      the verdict fails.

Everything talks to 127.0.0.1 only; every loop is bounded by the deadline
and every network wait by a timeout. Each client task connects from an
address of its own in 127.0.0.0/8 (127.0.1.1, 127.0.1.2, ...), as clients
on as many hosts would: from one address, the 300-odd idle and slow
connections would only measure public.max_connections_per_client.
"""

import asyncio
import collections
import contextvars
import csv
import json
import os
import random
import re
import ssl
import sys
import time
from urllib.parse import parse_qs, urlsplit

# ---- the slow upstream ------------------------------------------------------

MAX_SLEEP_MS = 20_000
MAX_DRIP = 50


async def upstream_conn(reader, writer):
    try:
        for _ in range(100_000):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 130)
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            hdrs = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    hdrs[k.strip().lower()] = v.strip()
            length = int(hdrs.get("content-length", "0") or 0)
            if length:
                await asyncio.wait_for(reader.readexactly(min(length, 1 << 20)), 30)
            q = parse_qs(urlsplit(target).query)
            ms = min(int(q.get("ms", ["0"])[0]), MAX_SLEEP_MS)
            drip = min(int(q.get("drip", ["0"])[0]), MAX_DRIP)
            keep = version == "HTTP/1.1" and hdrs.get("connection", "").lower() != "close"
            conn = b"keep-alive" if keep else b"close"
            if ms > 0:
                await asyncio.sleep(ms / 1000)
            if drip > 0:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\nConnection: " + conn + b"\r\n\r\n")
                await writer.drain()
                for i in range(drip):
                    chunk = b'{"chunk":%d}\n' % i
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                    await asyncio.sleep(0.2)
                writer.write(b"0\r\n\r\n")
            else:
                body = json.dumps({"slow_ms": ms, "method": method}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: %s\r\n\r\n%s"
                             % (len(body), conn, body))
            await writer.drain()
            if not keep:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
            ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def slow_upstream(port):
    server = await asyncio.start_server(upstream_conn, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ---- clients ----------------------------------------------------------------

# The source address of the client task running (set once per task: a task
# runs in a copy of the context it was created in).
SOURCE = contextvars.ContextVar("source", default="127.0.0.1")

class Ctx:
    def __init__(self, port, cafile, pool, deadline):
        self.port = port
        self.pool_path = pool
        self.deadline = deadline
        self.counts = collections.Counter()
        self.notes = []
        # The first few answers to API calls refused while their access token
        # was within its lifetime and its refresh token in the pool.
        self.evicted_samples = []
        self.sources = 0
        self.lifetimes = collections.defaultdict(list)
        self.tls_h1 = self._tls(cafile, ["http/1.1"])
        self.tls_h2 = self._tls(cafile, ["h2"])

    @staticmethod
    def _tls(cafile, alpn):
        c = ssl.create_default_context(cafile=cafile)
        c.set_alpn_protocols(alpn)
        return c

    def left(self):
        return self.deadline - time.monotonic()

    def own_source(self):
        """Gives the calling task an address of its own in 127.0.0.0/8."""
        n = self.sources
        self.sources += 1
        SOURCE.set(f"127.0.{1 + n // 250}.{1 + n % 250}")

    def pool(self):
        try:
            with open(self.pool_path) as f:
                return [l.split()[1] for l in f if re.match(r"^\d+ tgr_\w+$", l.strip())]
        except OSError:
            return []

    def in_pool(self, tok):
        return tok in self.pool()

    def unexpected(self, role, what):
        self.counts[role + ".unexpected"] += 1
        if len(self.notes) < 30:
            self.notes.append(f"{role}: {what}")

    async def connect(self, h2):
        r, w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port,
                                    ssl=self.tls_h2 if h2 else self.tls_h1,
                                    server_hostname="localhost",
                                    local_addr=(SOURCE.get(), 0)), 15)
        return r, w


def parse_response(raw):
    """(status, body) of one HTTP/1.1 answer read to EOF; de-chunks."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    hdrs = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip()
            for l in lines[1:] if ":" in l}
    if hdrs.get("transfer-encoding", "").lower() == "chunked":
        out, rest = b"", body
        for _ in range(10_000):
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        else:
            raise ValueError("too many chunks")
        body = out
    return status, body


async def h1_call(ctx, raw, *, head_gap=0.0, body=b"", body_gap=0.0, timeout=40.0,
                  abandon_after=None):
    """One request on a fresh connection (Connection: close), optionally
    sending its head and/or body a byte at a time. Returns (status, body), or
    None when the client gave up (deliberately) after `abandon_after` s
    without an answer."""
    r, w = await ctx.connect(h2=False)
    try:
        async def dribble(data, gap):
            # No pause after the last byte: the answer may come (and the
            # connection close) at once.
            for i, b in enumerate(data):
                if i:
                    await asyncio.sleep(gap)
                w.write(bytes([b]))
                await w.drain()

        async def run():
            if head_gap:
                await dribble(raw, head_gap)
            else:
                w.write(raw)
                await w.drain()
            if body_gap:
                await dribble(body, body_gap)
            elif body:
                w.write(body)
                await w.drain()
            return parse_response(await r.read())
        if abandon_after is not None:
            try:
                return await asyncio.wait_for(run(), abandon_after)
            except asyncio.TimeoutError:
                return None
        return await asyncio.wait_for(run(), timeout)
    finally:
        w.close()


def h1_get(ctx, path, access):
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{ctx.port}\r\n"
            f"Authorization: Bearer {access}\r\nUser-Agent: soak-slow\r\n"
            f"Connection: close\r\n\r\n").encode()


def form(tok):
    return f"grant_type=refresh_token&refresh_token={tok}".encode()


def h1_token_head(ctx, length):
    return (f"POST /iwc/api/security/oauth/token HTTP/1.1\r\nHost: 127.0.0.1:{ctx.port}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {length}\r\n"
            f"User-Agent: soak-slow\r\nConnection: close\r\n\r\n").encode()


class Holder:
    """A client's refresh token and access token, exchanged (at normal speed)
    when needed; a refusal of a token no longer in the pool is expected."""

    def __init__(self, ctx, role):
        self.ctx, self.role = ctx, role
        self.tok = self.access = None
        self.until = 0.0

    def pick(self):
        pool = self.ctx.pool()
        self.tok = random.choice(pool) if pool else "tgr_pool_is_empty"

    async def get(self):
        for _ in range(20):
            if self.access and time.monotonic() < self.until:
                return self.access
            if self.tok is None:
                self.pick()
            body = form(self.tok)
            status, ans = await h1_call(self.ctx, h1_token_head(self.ctx, len(body)) + body)
            if status == 200:
                j = json.loads(ans)
                self.access, self.until = j["access_token"], time.monotonic() + j["expires_in"] - 1
                self.ctx.counts[self.role + ".exchange_ok"] += 1
                return self.access
            if status == 400 and b"invalid_grant" in ans and not self.ctx.in_pool(self.tok):
                self.ctx.counts[self.role + ".exchange_refused_deleted"] += 1
            else:
                self.ctx.unexpected(self.role, f"exchange answered {status}: {ans[:120]!r}")
            self.pick()
        raise RuntimeError("no usable refresh token after 20 tries")

    def refused(self, status, body):
        """Classifies a 401 on an API call and drops the access token, so the
        next call exchanges again, as a real script does. Within its lifetime
        and with its refresh token in the pool, the token was evicted
        (tokens.max_access_per_refresh: another client exchanges the same
        refresh token hundreds of times a second): a documented refusal,
        checked in the report against the gateway's eviction count. Any
        other status is unexpected."""
        expired = time.monotonic() >= self.until
        self.access = None
        if status != 401 or b"invalid_token" not in body:
            self.ctx.unexpected(self.role, f"API answered {status}: {body[:120]!r}")
        elif expired:
            self.ctx.counts[self.role + ".refused_expired"] += 1
        elif not self.ctx.in_pool(self.tok):
            self.ctx.counts[self.role + ".refused_deleted"] += 1
        else:
            self.ctx.counts[self.role + ".refused_evicted"] += 1
            if len(self.ctx.evicted_samples) < 3:
                self.ctx.evicted_samples.append(body[:200].decode("utf-8", "replace"))


async def loop(ctx, role, once, start_spread=0.0):
    """Runs `once` until the deadline; an exception is an unexpected error."""
    ctx.own_source()
    await asyncio.sleep(random.uniform(0, start_spread))
    for _ in range(1_000_000):
        if ctx.left() < 1:
            return
        try:
            await once()
        except Exception as e:  # noqa: BLE001 - every failure is counted and noted
            ctx.unexpected(role, f"{type(e).__name__}: {e}")
            await asyncio.sleep(0.5)


async def slow_h1_headers(ctx):
    """API calls whose request head goes out a byte every 25 ms (~5 s)."""
    role, h = "slow_h1_headers", Holder(ctx, "slow_h1_headers")

    async def once():
        access = await h.get()
        status, body = await h1_call(ctx, h1_get(ctx, "/iwc/api/databases", access), head_gap=0.025)
        if status == 200 and b"PRODSQL01" in body:
            ctx.counts[role + ".ok"] += 1
        elif status == 401:
            h.refused(status, body)
        else:
            ctx.unexpected(role, f"{status}: {body[:120]!r}")
    await loop(ctx, role, once, 5)


async def slow_h1_body(ctx):
    """Exchanges whose form body goes out a byte every 60 ms (~5 s)."""
    role = "slow_h1_body"

    async def once():
        pool = ctx.pool()
        tok = random.choice(pool) if pool else "tgr_pool_is_empty"
        body = form(tok)
        status, ans = await h1_call(ctx, h1_token_head(ctx, len(body)), body=body, body_gap=0.06)
        if status == 200 and b"access_token" in ans:
            ctx.counts[role + ".ok"] += 1
        elif status == 400 and b"invalid_grant" in ans and not ctx.in_pool(tok):
            ctx.counts[role + ".refused_deleted"] += 1
        else:
            ctx.unexpected(role, f"{status}: {ans[:120]!r}")
    await loop(ctx, role, once, 5)


async def h2_call(ctx, headers, body=None, gap=0.02, timeout=40.0):
    """One HTTP/2 request on a fresh connection: the settings exchange at
    normal speed, then the HEADERS frame a byte at a time (no body), or the
    HEADERS frame at once and the body as one-byte DATA frames. Returns
    (status, body)."""
    import h2.config
    import h2.connection
    import h2.events

    r, w = await ctx.connect(h2=True)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    st = {"acked": False, "status": None, "body": b"", "ended": False}

    async def pump(until):
        """Reads and handles frames (answering what the protocol requires)
        until `until()` holds."""
        for _ in range(10_000):
            if until():
                return
            data = await r.read(65536)
            if not data:
                raise ConnectionError("connection closed")
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.SettingsAcknowledged):
                    st["acked"] = True
                elif isinstance(ev, h2.events.ResponseReceived):
                    st["status"] = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    st["body"] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    st["ended"] = True
                elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise ConnectionError(type(ev).__name__)
            w.write(conn.data_to_send())
            await w.drain()
        raise RuntimeError("too many frames")

    async def run():
        conn.initiate_connection()
        w.write(conn.data_to_send())
        await w.drain()
        await pump(lambda: st["acked"])
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers, end_stream=body is None)
        frame = conn.data_to_send()
        if body is None:
            for i, b in enumerate(frame):
                if i:
                    await asyncio.sleep(gap)
                w.write(bytes([b]))
                await w.drain()
        else:
            w.write(frame)
            for i, b in enumerate(body):
                if i:
                    await asyncio.sleep(gap)
                conn.send_data(sid, bytes([b]), end_stream=i == len(body) - 1)
                w.write(conn.data_to_send())
                await w.drain()
        await pump(lambda: st["ended"])
        return st["status"], st["body"]

    try:
        return await asyncio.wait_for(run(), timeout)
    finally:
        w.close()


async def slow_h2_headers(ctx):
    """HTTP/2 API calls whose HEADERS frame goes out a byte every 20 ms."""
    role, h = "slow_h2_headers", Holder(ctx, "slow_h2_headers")

    async def once():
        access = await h.get()
        hdrs = [(":method", "GET"), (":scheme", "https"), (":authority", f"127.0.0.1:{ctx.port}"),
                (":path", "/iwc/api/databases"), ("authorization", f"Bearer {access}"),
                ("user-agent", "soak-slow-h2")]
        status, body = await h2_call(ctx, hdrs)
        if status == 200 and b"PRODSQL01" in body:
            ctx.counts[role + ".ok"] += 1
        elif status == 401:
            h.refused(status, body)
        else:
            ctx.unexpected(role, f"{status}: {body[:120]!r}")
    await loop(ctx, role, once, 5)


async def slow_h2_body(ctx):
    """HTTP/2 exchanges whose body goes out as one-byte DATA frames, 60 ms apart."""
    role = "slow_h2_body"

    async def once():
        pool = ctx.pool()
        tok = random.choice(pool) if pool else "tgr_pool_is_empty"
        body = form(tok)
        hdrs = [(":method", "POST"), (":scheme", "https"), (":authority", f"127.0.0.1:{ctx.port}"),
                (":path", "/token"), ("content-type", "application/x-www-form-urlencoded"),
                ("user-agent", "soak-slow-h2")]
        status, ans = await h2_call(ctx, hdrs, body=body, gap=0.06)
        if status == 200 and b"access_token" in ans:
            ctx.counts[role + ".ok"] += 1
        elif status == 400 and b"invalid_grant" in ans and not ctx.in_pool(tok):
            ctx.counts[role + ".refused_deleted"] += 1
        else:
            ctx.unexpected(role, f"{status}: {ans[:120]!r}")
    await loop(ctx, role, once, 5)


async def idle(ctx, kind, spread):
    """One silent connection at a time, reopened when the gateway closes it:
    `tcp` never starts TLS, `h1` completes the handshake and says nothing,
    `h2` also sends the connection preface and SETTINGS, then reads (and
    never answers) what the gateway sends. Records how long each lived."""
    import h2.config
    import h2.connection

    role = "idle_" + kind
    ctx.own_source()
    await asyncio.sleep(random.uniform(0, spread))
    for _ in range(100_000):
        if ctx.left() < 1:
            return
        opened = time.monotonic()
        try:
            if kind == "tcp":
                r, w = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", ctx.port, local_addr=(SOURCE.get(), 0)), 15)
            else:
                r, w = await ctx.connect(h2=kind == "h2")
                if kind == "h2":
                    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                    conn.initiate_connection()
                    w.write(conn.data_to_send())
                    await w.drain()
        except Exception as e:  # noqa: BLE001
            ctx.unexpected(role, f"connect: {type(e).__name__}: {e}")
            await asyncio.sleep(1)
            continue
        ctx.counts[role + ".opened"] += 1
        closed = False
        try:
            for _ in range(100_000):
                left = ctx.left()
                if left <= 0:
                    break
                try:
                    data = await asyncio.wait_for(r.read(65536), left)
                except asyncio.TimeoutError:
                    break
                if not data:
                    closed = True
                    break
        except (ConnectionError, ssl.SSLError):
            closed = True
        finally:
            w.close()
        if closed:
            ctx.counts[role + ".closed_by_gateway"] += 1
            ctx.lifetimes[role].append(time.monotonic() - opened)
        else:
            ctx.counts[role + ".held_to_end"] += 1


async def upstream_slow(ctx):
    """Calls the upstream's slow path: late answers and dripped bodies (200),
    answers later than upstream.response_timeout (504, deliberate), and
    clients that hang up while the upstream is still thinking."""
    role, h = "upstream_slow", Holder(ctx, "upstream_slow")
    kinds = ["late"] * 6 + ["drip"] * 2 + ["timeout", "abandon"]

    async def once():
        access = await h.get()
        kind = random.choice(kinds)
        if kind == "late":
            path = f"/iwc/api/slow?ms={random.choice([300, 1000, 2500])}"
        elif kind == "drip":
            path = "/iwc/api/slow?drip=10"
        elif kind == "timeout":
            path = "/iwc/api/slow?ms=6000"
        else:
            path = "/iwc/api/slow?ms=3000"
        if kind == "abandon":
            got = await h1_call(ctx, h1_get(ctx, path, access), abandon_after=0.5)
            if got is None:
                ctx.counts[role + ".abandoned"] += 1
                return
            status, body = got  # answered at once: a refusal, or something wrong
        else:
            status, body = await h1_call(ctx, h1_get(ctx, path, access), timeout=15)
        if status == 401:
            h.refused(status, body)
        elif kind == "timeout" and status == 504 and b"upstream_timeout" in body:
            ctx.counts[role + ".timeout_504"] += 1
        elif kind == "late" and status == 200 and b"slow_ms" in body:
            ctx.counts[role + ".late_ok"] += 1
        elif kind == "drip" and status == 200 and body.count(b'"chunk"') == 10:
            ctx.counts[role + ".drip_ok"] += 1
        else:
            ctx.unexpected(role, f"{kind}: {status}: {body[:120]!r}")
    await loop(ctx, role, once, 3)


async def clients(out, port, cafile, pool, seconds):
    ctx = Ctx(port, cafile, pool, time.monotonic() + seconds)
    n = lambda name, default: int(os.environ.get(name, default))  # noqa: E731
    spread = min(20.0, seconds / 4)
    tasks = []
    for _ in range(n("SOAK_SLOW_CLIENTS", 2)):
        tasks += [slow_h1_headers(ctx), slow_h1_body(ctx), slow_h2_headers(ctx), slow_h2_body(ctx)]
    for _ in range(n("SOAK_UPSTREAM_SLOW_CLIENTS", 8)):
        tasks.append(upstream_slow(ctx))
    for kind, count in (("h1", n("SOAK_IDLE_H1", 200)), ("h2", n("SOAK_IDLE_H2", 100)),
                        ("tcp", n("SOAK_IDLE_TCP", 20))):
        tasks += [idle(ctx, kind, spread) for _ in range(count)]
    running = [asyncio.ensure_future(t) for t in tasks]
    # Every task ends by itself by the deadline plus its last operation's
    # timeout (at most 40 s); anything still running then is cut.
    done, pending = await asyncio.wait(running, timeout=seconds + 45)
    for t in pending:
        t.cancel()
    ctx.counts["cut_at_end"] = len(pending)
    for t in done:
        if t.exception() is not None:
            ctx.unexpected("clients", f"task failed: {t.exception()!r}")
    lifetimes = {k: {"n": len(v), "min_s": round(min(v), 1), "median_s": round(sorted(v)[len(v) // 2], 1),
                     "max_s": round(max(v), 1)} for k, v in ctx.lifetimes.items() if v}
    with open(os.path.join(out, "clients.json"), "w") as f:
        json.dump({"counts": dict(sorted(ctx.counts.items())), "lifetimes": lifetimes,
                   "notes": ctx.notes, "evicted_samples": ctx.evicted_samples,
                   "sources": ctx.sources}, f, indent=1)


# ---- the report -------------------------------------------------------------

def slope_per_min(points):
    """Least-squares slope of (seconds, value) points, per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return 0.0
    return 60 * sum((p[0] - mx) * (p[1] - my) for p in points) / sxx


def kv(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    out[parts[0]] = float(parts[1]) if "." in parts[1] else int(parts[1])
    except OSError:
        pass
    return out


def h2load_runs(out):
    """Sums the h2load runs; 4xx are expected only in runs whose refresh
    token was deleted during the run, or whose access token was evicted
    (tokens.max_access_per_refresh) during it: h2.tsv has run,
    token_in_pool_after, h2load's exit code, and the status of one more
    call with the run's access token after it when the run had 4xx ("-"
    otherwise; 401 invalid_token: refused, not the request's fault)."""
    tot = collections.Counter()
    try:
        rows = [l.split("\t") for l in open(os.path.join(out, "h2.tsv")).read().splitlines()]
    except OSError:
        rows = []
    for run, in_pool_after, rc, probe in rows:
        text = open(os.path.join(out, "h2", f"run-{run}.txt")).read()
        req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                        r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
        st = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
        tot["runs"] += 1
        if not req or not st or rc != "0":
            tot["unexpected"] += 1
            tot["bad_runs"] += 1
            continue
        done, errored, timeout = int(req[3]), int(req[6]), int(req[7])
        s2, s3, s4, s5 = (int(x) for x in st.groups())
        tot["done"] += done
        tot["ok"] += s2
        tot["unexpected"] += errored + timeout + s3 + s5
        if in_pool_after == "0":
            tot["refused_deleted"] += s4
        elif s4 and probe == "401":
            # One access token (the run's), evicted during the run: a
            # h2load run cannot exchange again, so its later calls fail too.
            tot["refused_evicted"] += s4
            tot["evicted_tokens"] += 1
        else:
            tot["unexpected"] += s4
    return tot


def tsv_counts(path):
    c = collections.Counter()
    try:
        for line in open(path):
            c[line.strip()] += 1
    except OSError:
        pass
    return c


def report(out, seconds):
    rows = list(csv.DictReader(open(os.path.join(out, "samples.csv"))))
    lines = []
    p = lines.append
    p(f"### Samples (every {os.environ.get('SOAK_SAMPLE_SECONDS', '5')} s)")
    p("")
    p("| time s | rss MB | fds | threads | live access | refresh | public conns | evicted | cpu s |")
    p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        p(f"| {r['t_s']} | {int(r['rss_kb']) / 1024:.1f} | {r['fds']} | {r['threads']} | "
          f"{r['live_access']} | {r['refresh']} | {r['public_connections']} | {r['evicted']} | "
          f"{r['cpu_s']} |")
    half = [r for r in rows if float(r["t_s"]) >= seconds / 2]
    rss_slope = slope_per_min([(float(r["t_s"]), int(r["rss_kb"]) / 1024) for r in half])
    fd_slope = slope_per_min([(float(r["t_s"]), int(r["fds"])) for r in half])
    thr_slope = slope_per_min([(float(r["t_s"]), int(r["threads"])) for r in half])
    live_slope = slope_per_min([(float(r["t_s"]), int(r["live_access"])) for r in half])

    api = kv(os.path.join(out, "wrk-api.counts"))
    exch = kv(os.path.join(out, "wrk-exchange.counts"))
    h2 = h2load_runs(out)
    h2x = tsv_counts(os.path.join(out, "h2-exchanges.tsv"))
    rot = tsv_counts(os.path.join(out, "rotator.tsv"))
    try:
        cl = json.load(open(os.path.join(out, "clients.json")))
    except (OSError, ValueError):
        cl = {"counts": {"clients.unexpected": 1}, "lifetimes": {}, "notes": ["no clients.json"]}
    cc = cl["counts"]
    end = kv(os.path.join(out, "end.txt"))

    p("")
    p("### Requests by kind")
    p("")
    p("| client | done as expected | expected refusals | unexpected |")
    p("|---|---:|---:|---:|")

    def row(name, ok, refused, bad):
        p(f"| {name} | {ok:,} | {refused:,} | {bad:,} |")
    row("API calls, HTTP/1.1 (wrk, 6 connections)", api.get("api_ok", 0),
        api.get("api_refused_deleted", 0) + api.get("api_refused_expired", 0)
        + api.get("api_refused_evicted", 0),
        api.get("unexpected", 0) + api.get("socket_errors", 0))
    row("  their exchanges", api.get("exchange_ok", 0), api.get("exchange_refused_deleted", 0), 0)
    row("token exchanges (wrk, 2 connections)", exch.get("exchange_ok", 0),
        exch.get("exchange_refused_deleted", 0), exch.get("unexpected", 0) + exch.get("socket_errors", 0))
    row(f"API calls, HTTP/2 (h2load, {h2['runs']} runs of 2 connections x 4 streams)", h2["ok"],
        h2["refused_deleted"] + h2["refused_evicted"], h2["unexpected"])
    row("  their exchanges (curl)", h2x["200"], h2x["400 deleted"],
        sum(v for k, v in h2x.items() if k not in ("200", "400 deleted")))
    row("refresh tokens created / deleted (admin API)", rot["create 201"] + rot["delete 204"]
        + rot["bulk 200"], 0, sum(v for k, v in rot.items() if k not in ("create 201", "delete 204", "bulk 200")))
    groups = collections.defaultdict(collections.Counter)
    for k, v in cc.items():
        role, _, what = k.partition(".")
        groups[role][what] = v
    expected_refusal = {"refused_deleted", "refused_expired", "refused_evicted",
                        "exchange_refused_deleted"}
    deliberate = {"timeout_504", "abandoned", "closed_by_gateway", "held_to_end", "opened"}
    for role in sorted(groups):
        if role == "cut_at_end":
            continue
        g = groups[role]
        ok = sum(v for k, v in g.items() if k not in expected_refusal | deliberate | {"unexpected"})
        det = ", ".join(f"{k} {v:,}" for k, v in sorted(g.items()) if k in deliberate)
        row(role + (f" ({det})" if det else ""), ok, sum(g[k] for k in expected_refusal), g["unexpected"])
    if cl["lifetimes"]:
        p("")
        p("Idle connections closed by the gateway, lifetime: " + "; ".join(
            f"{k} {v['n']}x {v['min_s']}-{v['max_s']} s (median {v['median_s']})"
            for k, v in sorted(cl["lifetimes"].items())))
    for n in cl["notes"]:
        p(f"- note: {n}")
    # Access tokens refused within their lifetime while their refresh token
    # was still in the pool: each one a distinct token the client dropped
    # (then exchanged again), so there can be no more of them than tokens
    # the gateway evicted at tokens.max_access_per_refresh.
    refused_evicted = (api.get("api_refused_evicted", 0) + h2["evicted_tokens"]
                       + sum(v for k, v in cc.items() if k.endswith(".refused_evicted")))
    evicted = end.get("evicted_after", -1)
    p("")
    p(f"Access tokens refused within their lifetime (refresh token still pooled): {refused_evicted:,}; "
      f"access tokens the gateway evicted at tokens.max_access_per_refresh: {evicted:,}")
    for sample in cl.get("evicted_samples", []):
        p(f"- such a refusal: `{sample}`")

    unexpected = (api.get("unexpected", 0) + api.get("socket_errors", 0) + exch.get("unexpected", 0)
                  + exch.get("socket_errors", 0) + h2["unexpected"]
                  + sum(v for k, v in h2x.items() if k not in ("200", "400 deleted"))
                  + sum(v for k, v in rot.items() if k not in ("create 201", "delete 204", "bulk 200"))
                  + sum(v for k, v in cc.items() if k.endswith(".unexpected")))
    total = (api.get("requests", 0) + exch.get("requests", 0) + h2["done"] + sum(h2x.values())
             + sum(rot.values()) + sum(v for k, v in cc.items()
                                       if not k.startswith("idle_") and k != "cut_at_end"))

    rss_max = float(os.environ.get("SOAK_RSS_SLOPE_MAX", "1"))
    fd_max = float(os.environ.get("SOAK_FD_SLOPE_MAX", "5"))
    first, last = rows[0], rows[-1]
    # The first 2-3 minutes are warm-up (RSS climbs ~15 MB while allocator
    # arenas, connection buffers and maps reach their working size), so a
    # shorter run's trends are shown but not judged.
    judged = seconds >= 300
    checks = [
        (rss_slope <= rss_max or not judged, f"RSS trend over the second half: {rss_slope:+.2f} MB/min "
         f"(limit {rss_max}); {int(first['rss_kb']) / 1024:.1f} MB at start, "
         f"{max(int(r['rss_kb']) for r in rows) / 1024:.1f} MB peak, {int(last['rss_kb']) / 1024:.1f} MB at end"),
        (fd_slope <= fd_max or not judged, f"open fds trend over the second half: {fd_slope:+.1f}/min (limit {fd_max}); "
         f"{first['fds']} at start, {max(int(r['fds']) for r in rows)} peak, {last['fds']} at end"),
        (unexpected == 0, f"unexpected errors: {unexpected} of {total:,} requests and admin calls"),
        (refused_evicted <= max(evicted, 0), f"refusals of pooled access tokens within their lifetime: "
         f"{refused_evicted:,}, at most the {evicted:,} evicted (tokens.max_access_per_refresh)"),
        (end.get("tokengate_alive", 0) == 1, "tokengate still running when the load ended"),
        (end.get("conns_after", -1) == 0, f"public connections after the clients stopped: "
         f"{end.get('conns_after', '?')} (must drop to 0)"),
        (end.get("live_after_delete", -1) == 0 and end.get("refresh_after_delete", -1) == 0,
         f"after deleting every refresh token: {end.get('live_after_delete', '?')} live access tokens, "
         f"{end.get('refresh_after_delete', '?')} refresh tokens (must be 0 and 0)"),
        (end.get("exit_code", -1) == 0, f"tokengate exit code after SIGTERM: {end.get('exit_code', '?')}"),
        (end.get("log_errors", -1) == 0, f"ERROR lines in tokengate's log: {end.get('log_errors', '?')} "
         f"(WARN lines: {end.get('log_warnings', '?')})"),
    ]
    counted = (api.get("exchange_ok", 0) + exch.get("exchange_ok", 0) + h2x["200"] + 1
               + sum(v for k, v in cc.items() if k.endswith(".exchange_ok"))
               + groups["slow_h1_body"]["ok"] + groups["slow_h2_body"]["ok"])
    p("")
    p("### Verdict")
    p("")
    p(f"- threads trend {thr_slope:+.2f}/min ({first['threads']} -> {last['threads']}); "
      f"live access tokens trend {live_slope:+.0f}/min ({half[0]['live_access'] if half else '?'} -> "
      f"{last['live_access']}); after the load: fds {end.get('fds_after', '?')}, "
      f"RSS {end.get('rss_kb_after', 0) / 1024:.1f} MB")
    p(f"- exchanges: {counted:,} answered to the clients (wrk leaves out the ones in flight when it "
      f"stops), {end.get('audit_exchanged', '?'):,} `token.exchanged` audit lines; "
      f"refresh tokens created {rot['create 201'] + int(os.environ.get('SOAK_POOL_SIZE', 8)):,}, deleted {rot['delete 204'] + rot['bulk 200']:,} "
      f"during the run")
    for i, (ok, text) in enumerate(checks):
        if i < 2 and not judged:
            p(f"- not judged (runs under 300 s are mostly warm-up): {text}")
        else:
            p(f"- {'PASS' if ok else 'FAIL'}: {text}")
    verdict = all(ok for ok, _ in checks)
    p(f"- **{'PASS' if verdict else 'FAIL'}**")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    return 0 if verdict else 1


def main(argv):
    if len(argv) >= 3 and argv[1] == "slow-upstream":
        asyncio.run(slow_upstream(int(argv[2])))
        return 0
    if len(argv) == 7 and argv[1] == "clients":
        asyncio.run(clients(argv[2], int(argv[3]), argv[4], argv[5], float(argv[6])))
        return 0
    if len(argv) == 4 and argv[1] == "report":
        return report(argv[2], float(argv[3]))
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
