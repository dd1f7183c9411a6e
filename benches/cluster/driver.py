#!/usr/bin/env python3
"""The cluster benchmark's measuring half (Python 3 standard library only).

  driver.py revocation --ca F --password P --a-public URL --a-admin URL
                       --b-public URL --b-admin URL --count N --out DIR
      Creates N refresh tokens on replica A and, for each, an access token
      (issued by A for even ones, by B for odd ones; each checked accepted on
      A first, so A has it verified and cached). Then, one token at a time:
      DELETE it on replica B's admin API and poll replica A with its access
      token (keep-alive, one request every ~1 ms, at most 5 s) until A
      answers 401. Writes DIR/revocation.tsv (one row per delete) and
      DIR/revocation.json (percentiles), prints the JSON.

  driver.py summary DIR MODE ROUNDS DUR
      Reads DIR/results.tsv (benches/load/report.py parse-wrk rows) and
      DIR/revocation.json, prints the summary (also DIR/summary.md) with the
      issue's targets.

Every loop is bounded in count and in time.
"""
import argparse
import base64
import http.client
import json
import os
import ssl
import statistics
import sys
import time
import urllib.parse

POLL_INTERVAL_S = 0.001
POLL_BOUND_S = 5.0
# The whole revocation phase: a hard stop however slow the machine is.
PHASE_BOUND_S = 900.0
API_PATH = "/iwc/api/databases"


class Conn:
    """One keep-alive HTTPS connection to a base URL, re-opened after an error."""

    def __init__(self, base, ctx, auth=None):
        u = urllib.parse.urlsplit(base)
        self.host, self.port, self.ctx, self.auth = u.hostname, u.port, ctx, auth
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        h = dict(headers or {})
        if self.auth:
            h["Authorization"] = "Basic " + base64.b64encode(self.auth.encode()).decode()
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=10)
            try:
                self.conn.request(method, path, body=body, headers=h)
                r = self.conn.getresponse()
                data = r.read()
                return r.status, data
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")


def percentile(values, q):
    """Nearest rank, as benches/load/report.py."""
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, int(round(q / 100.0 * (len(values) - 1)))))
    return values[k]


def stats(values):
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def revocation(args):
    ctx = ssl.create_default_context(cafile=args.ca)
    auth = f"admin:{args.password}"
    a_admin = Conn(args.a_admin, ctx, auth)
    b_admin = Conn(args.b_admin, ctx, auth)
    a_pub = Conn(args.a_public, ctx)
    b_pub = Conn(args.b_public, ctx)
    started = time.monotonic()

    def exchange(conn, refresh):
        body = urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": refresh})
        status, data = conn.request("POST", "/iwc/api/security/oauth/token", body,
                                    {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 200:
            sys.exit(f"exchange answered {status}: {data[:200]!r}")
        return json.loads(data)["access_token"]

    tokens = []  # (id, issued_by, access token)
    for i in range(args.count):
        if time.monotonic() - started > PHASE_BOUND_S:
            sys.exit("revocation set-up exceeded its time bound")
        status, data = a_admin.request("POST", "/api/refresh-tokens",
                                       json.dumps({"name": f"bench-revocation-{i}"}),
                                       {"Content-Type": "application/json"})
        if status != 201:
            sys.exit(f"create on A answered {status}: {data[:200]!r}")
        created = json.loads(data)
        issued_by = "A" if i % 2 == 0 else "B"
        access = exchange(a_pub if issued_by == "A" else b_pub, created["token"])
        status, _ = a_pub.request("GET", API_PATH, headers={"Authorization": f"Bearer {access}"})
        if status != 200:
            sys.exit(f"A answered {status} to a fresh access token issued by {issued_by}")
        tokens.append((created["id"], issued_by, access))

    rows, errors, timeouts = [], [], 0
    phase_t0 = time.perf_counter()
    for tid, issued_by, access in tokens:
        if time.monotonic() - started > PHASE_BOUND_S:
            errors.append("phase time bound reached; stopped early")
            break
        bearer = {"Authorization": f"Bearer {access}"}
        t0 = time.perf_counter()
        status, data = b_admin.request("DELETE", f"/api/refresh-tokens/{tid}")
        t1 = time.perf_counter()
        if status != 204:
            errors.append(f"delete {tid} on B answered {status}: {data[:200]!r}")
            continue
        polls, refused_at, other = 0, None, None
        while time.perf_counter() - t1 < POLL_BOUND_S:
            polls += 1
            status, _ = a_pub.request("GET", API_PATH, headers=bearer)
            now = time.perf_counter()
            if status == 401:
                refused_at = now
                break
            if status != 200:
                other = status
                break
            time.sleep(POLL_INTERVAL_S)
        if other is not None:
            errors.append(f"token {tid}: A answered {other} while polling")
            continue
        if refused_at is None:
            timeouts += 1
            errors.append(f"token {tid}: A still accepted it {POLL_BOUND_S:.0f} s after the delete")
            continue
        rows.append({
            "id": tid, "issued_by": issued_by,
            "since_sent_ms": (refused_at - t0) * 1000.0,
            "since_ack_ms": (refused_at - t1) * 1000.0,
            "delete_ms": (t1 - t0) * 1000.0,
            "polls": polls,
            "at_s": t0 - phase_t0,
        })

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "revocation.tsv"), "w") as f:
        f.write("id\tissued_by\tsince_delete_sent_ms\tsince_delete_acked_ms\tdelete_ms\tpolls\tat_s\n")
        for r in rows:
            f.write(f"{r['id']}\t{r['issued_by']}\t{r['since_sent_ms']:.3f}\t{r['since_ack_ms']:.3f}"
                    f"\t{r['delete_ms']:.3f}\t{r['polls']}\t{r['at_s']:.3f}\n")
    result = {
        "deletes": len(tokens),
        "measured": len(rows),
        "timeouts": timeouts,
        "errors": errors[:20],
        "error_count": len(errors),
        "poll_interval_ms": POLL_INTERVAL_S * 1000,
        "since_sent": stats([r["since_sent_ms"] for r in rows]),
        "since_ack": stats([r["since_ack_ms"] for r in rows]),
        "delete": stats([r["delete_ms"] for r in rows]),
        "by_issuer": {
            who: stats([r["since_sent_ms"] for r in rows if r["issued_by"] == who]) for who in ("A", "B")
        },
        "seconds": time.monotonic() - started,
    }
    with open(os.path.join(args.out, "revocation.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))
    return 0 if not errors else 1


def summary(args):
    rows = []
    with open(os.path.join(args.dir, "results.tsv")) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) == 8:
                rows.append({"scenario": p[0], "backend": p[1], "round": int(p[2]), "rps": float(p[3]),
                             "p50": float(p[4]), "p99": float(p[5]), "requests": int(p[6]),
                             "errors": int(p[7])})
    with open(os.path.join(args.dir, "revocation.json")) as f:
        rev = json.load(f)

    def med(scenario, backend, key):
        v = [r[key] for r in rows if r["scenario"] == scenario and r["backend"] == backend]
        return statistics.median(v) if v else float("nan")

    def errs(scenario, backend):
        return sum(r["errors"] for r in rows if r["scenario"] == scenario and r["backend"] == backend)

    out = []
    w = out.append
    w(f"# tokengate cluster benchmark ({args.mode}: {args.rounds} round(s) x {args.dur} s per load run)")
    w("")
    w("## Revocation propagation: delete on replica B, until replica A refuses (401)")
    w("")
    s, a = rev["since_sent"], rev["since_ack"]
    w(f"{rev['measured']} of {rev['deletes']} deletes measured; A polled every "
      f"{rev['poll_interval_ms']:.0f} ms (plus the request's own time), bounded at {POLL_BOUND_S:.0f} s.")
    w("")
    w("| measured from | p50 ms | p99 ms | max ms | mean ms |")
    w("|---|---:|---:|---:|---:|")
    w(f"| DELETE sent to B | {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} | {s['mean']:.1f} |")
    w(f"| B's 204 received | {a['p50']:.1f} | {a['p99']:.1f} | {a['max']:.1f} | {a['mean']:.1f} |")
    d = rev["delete"]
    w(f"| (the DELETE itself) | {d['p50']:.1f} | {d['p99']:.1f} | {d['max']:.1f} | {d['mean']:.1f} |")
    for who in ("A", "B"):
        b = rev["by_issuer"][who]
        w(f"| sent, tokens issued by {who} ({b['n']}) | {b['p50']:.1f} | {b['p99']:.1f} | {b['max']:.1f} | {b['mean']:.1f} |")
    if rev["error_count"]:
        w("")
        w(f"{rev['error_count']} error(s): " + "; ".join(rev["errors"]))
    w("")
    w("## Throughput: replica A (postgres backend, B running) vs a single redb gateway")
    w("")
    w("Median over rounds; HTTPS, wrk -t2 -c50, keep-alive.")
    w("")
    w("| scenario | redb req/s | postgres req/s | postgres / redb | redb p50/p99 ms | postgres p50/p99 ms | errors redb/postgres |")
    w("|---|---:|---:|---:|---|---|---|")
    names = {"h1": "proxied GET with bearer (HTTP/1.1)", "exchange": "token exchange"}
    ratio = {}
    for sc in ("h1", "exchange"):
        r, p = med(sc, "redb", "rps"), med(sc, "postgres", "rps")
        ratio[sc] = p / r if r else float("nan")
        w(f"| {names[sc]} | {r:,.0f} | {p:,.0f} | {ratio[sc]:.3f} | "
          f"{med(sc, 'redb', 'p50'):.2f} / {med(sc, 'redb', 'p99'):.2f} | "
          f"{med(sc, 'postgres', 'p50'):.2f} / {med(sc, 'postgres', 'p99'):.2f} | "
          f"{errs(sc, 'redb')} / {errs(sc, 'postgres')} |")
    w("")
    w("Per round (req/s):")
    w("")
    for sc in ("h1", "exchange"):
        for be in ("redb", "postgres"):
            v = [f"{r['rps']:,.0f}" for r in sorted(rows, key=lambda r: r["round"])
                 if r["scenario"] == sc and r["backend"] == be]
            w(f"- {sc} {be}: {', '.join(v)}")
    w("")
    w("## Targets (issue 11)")
    w("")
    exch = med("exchange", "postgres", "rps")
    # A load run with failed requests measured something else: no verdict from it.
    clean = {sc: errs(sc, "redb") + errs(sc, "postgres") == 0 for sc in ("h1", "exchange")}
    worst = max(s["max"], 0.0)
    complete = rev["measured"] >= 200 and rev["error_count"] == 0
    checks = [
        ("request path within 5 % of redb (postgres / redb >= 0.95)", f"{ratio['h1']:.3f}",
         clean["h1"] and ratio["h1"] >= 0.95),
        ("exchanges >= 20,000/s (postgres backend)", f"{exch:,.0f}/s", clean["exchange"] and exch >= 20000),
        ("revocation <= 1 s on every one of >= 200 deletes (max, from the DELETE sent)",
         f"{worst:.1f} ms over {rev['measured']}", complete and worst <= 1000.0),
    ]
    for what, value, good in checks:
        w(f"- {'met   ' if good else 'MISSED'} {what}: {value}")
    for sc, ok in clean.items():
        if not ok:
            w(f"- INVALID: the {sc} runs had failed requests (see the errors column)")
    text = "\n".join(out) + "\n"
    with open(os.path.join(args.dir, "summary.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)
    return 0 if all(clean.values()) else 1


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("revocation")
    for name in ("ca", "password", "a-public", "a-admin", "b-public", "b-admin", "out"):
        r.add_argument(f"--{name}", required=True)
    r.add_argument("--count", type=int, default=200)
    s = sub.add_parser("summary")
    s.add_argument("dir")
    s.add_argument("mode")
    s.add_argument("rounds")
    s.add_argument("dur")
    args = ap.parse_args()
    return revocation(args) if args.cmd == "revocation" else summary(args)


if __name__ == "__main__":
    sys.exit(main())
