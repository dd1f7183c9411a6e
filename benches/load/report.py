#!/usr/bin/env python3
"""Parses wrk / h2load / ab / curl / loadgen output into TSV rows and prints the comparison table.

Row: scenario, proxy, round, req/s, p50 ms, p99 ms, requests, errors.
"""
import os
import re
import statistics
import sys


def ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def row(scenario, proxy, rnd, rps, p50, p99, requests, errors):
    print(f"{scenario}\t{proxy}\t{rnd}\t{rps:.1f}\t{p50:.3f}\t{p99:.3f}\t{requests}\t{errors}")


def parse_wrk(scenario, proxy, rnd):
    text = sys.stdin.read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = dict((p, ms(v, u)) for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M))
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors += int(m.group(1))
    row(scenario, proxy, rnd, rps, lat["50"], lat["99"], requests, errors)


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, int(round(q / 100.0 * (len(values) - 1)))))
    return values[k]


def parse_h2load(scenario, proxy, rnd, logfile):
    text = sys.stdin.read()
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    done, failed, errored = int(m.group(3)), int(m.group(5)), int(m.group(6))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    bad = int(m.group(3)) + int(m.group(4)) if m else 0
    durations = []
    with open(logfile) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                durations.append(int(parts[2]) / 1000.0)
    row(scenario, proxy, rnd, rps, percentile(durations, 50), percentile(durations, 99), done, failed + errored + bad)


def parse_ab(scenario, proxy, rnd, *files):
    """Sums concurrent ab runs: req/s and counts add up; p50 is their mean, p99 the worst."""
    rps = requests = errors = 0
    p50s, p99s = [], []
    for path in files:
        text = open(path).read()
        rps += float(re.search(r"Requests per second:\s+([\d.]+)", text).group(1))
        requests += int(re.search(r"Complete requests:\s+(\d+)", text).group(1))
        errors += int(re.search(r"Failed requests:\s+(\d+)", text).group(1))
        m = re.search(r"Non-2xx responses:\s+(\d+)", text)
        if m:
            errors += int(m.group(1))
        pct = dict(re.findall(r"^\s+(\d+)%\s+(\d+)", text, re.M))
        p50s.append(float(pct["50"]))
        p99s.append(float(pct["99"]))
    row(scenario, proxy, rnd, rps, sum(p50s) / len(p50s), max(p99s), requests, errors)


def parse_curl(scenario, proxy, rnd, dur, *prefixes):
    """Sums concurrent curl runs (`-w '%{http_code} %{time_total}'`, one line per
    transfer, in PREFIX.txt; bash `times` of the client in PREFIX.cpu).

    req/s is the 200s over the run's duration; any other status or a curl error
    line counts as an error. The clients' CPU time (user + system, µs) goes to
    stderr as "scenario proxy round µs" (compare.sh appends it to clientcpu.tsv).
    """
    ok = errors = 0
    times = []
    client_us = 0
    for prefix in prefixes:
        for line in open(prefix + ".txt"):
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                if parts[0] == "200":
                    ok += 1
                    times.append(float(parts[1]) * 1000.0)
                else:
                    errors += 1
            elif line.strip() and "Terminated" not in line:
                errors += 1
        try:
            # `times` prints the shell's own user/system time, then its children's.
            lines = open(prefix + ".cpu").read().split("\n")
            for v in re.findall(r"(\d+)m([\d.]+)s", lines[1]):
                client_us += int((int(v[0]) * 60 + float(v[1])) * 1e6)
        except (OSError, IndexError):
            pass
    row(scenario, proxy, rnd, ok / float(dur), percentile(times, 50), percentile(times, 99), ok, errors)
    print(f"{scenario}\t{proxy}\t{rnd}\t{client_us}", file=sys.stderr)


def parse_loadgen(scenario, proxy, rnd, prefix, resumed_path):
    """One `loadgen --mode resume` run: its RESULT line in PREFIX.txt, bash
    `times` of it in PREFIX.cpu.

    Prints the row; the client's CPU time (user + system, µs) goes to stderr
    as for parse_curl; "proxy round-N resumed count" is appended to
    RESUMED_PATH (every handshake but each worker's first must resume: the
    caller checks it).
    """
    text = open(prefix + ".txt").read()
    m = re.search(r"^RESULT (.*)$", text, re.M)
    if not m:
        sys.exit(f"no RESULT line in {prefix}.txt")
    f = dict(kv.split("=", 1) for kv in m.group(1).split())
    row(scenario, proxy, rnd, float(f["rps"]), float(f["p50"]), float(f["p99"]), int(f["count"]), int(f["errors"]))
    client_us = 0
    try:
        lines = open(prefix + ".cpu").read().split("\n")
        for v in re.findall(r"(\d+)m([\d.]+)s", lines[1]):
            client_us += int((int(v[0]) * 60 + float(v[1])) * 1e6)
    except (OSError, IndexError):
        pass
    print(f"{scenario}\t{proxy}\t{rnd}\t{client_us}", file=sys.stderr)
    with open(resumed_path, "a") as out:
        out.write(f"{proxy}\tround {rnd}\t{f['resumed']}\t{f['count']}\n")


# compare.sh's resume client: loadgen (default) or curl.
RESUME_CLIENT = os.environ.get("RESUME_CLIENT", "loadgen")


def fixed_rate():
    """compare.sh's fixed rate (h1rate, h2rate), requests per second; it checks RATE first."""
    try:
        return int(os.environ.get("RATE", "20000"), 10)
    except ValueError:
        return 20000


RATE = fixed_rate()

NAMES = {
    "h1": "HTTP/1.1 over TLS, 50 keep-alive connections (wrk)",
    "h2": "HTTP/2 over TLS, 10 connections x 10 streams (h2load)",
    "newconn": "one request per new TLS connection, 50 concurrent (2 x ab)",
    "resume": "one request per new TLS connection resuming a session, 50 concurrent ("
    + ("2 x curl" if RESUME_CLIENT == "curl" else "loadgen --mode resume") + ")",
    "exchange": "token exchange over TLS keep-alive, 50 connections (wrk)",
    "h1rate": f"HTTP/1.1 over TLS at a fixed {RATE:,} req/s, 50 keep-alive connections (h2load --rps)",
    "h2rate": f"HTTP/2 over TLS at a fixed {RATE:,} req/s, 10 connections x 10 streams (h2load --rps)",
}

# The fixed-rate scenarios: every proxy serves the same load, so they are
# compared on CPU per request (the best peer is the one that spent least).
FIXED_RATE = ("h1rate", "h2rate")


def table(path, cpu_path, mode, rounds, dur, rss_idle_kb, rss_loaded_kb, exchanges, client_cpu_path=None, resumed_path=None,
          live="0"):
    rows = {}
    for line in open(path):
        s, p, _r, rps, p50, p99, n, err = line.rstrip("\n").split("\t")
        rows.setdefault((s, p), []).append((float(rps), float(p50), float(p99), int(n), int(err)))
    # CPU microseconds the proxy itself spent per request (user + system), per run.
    cpu = {}
    requests = {}
    for line in open(path):
        s, p, r, _rps, _p50, _p99, n, _err = line.rstrip("\n").split("\t")
        requests[(s, p, r)] = int(n)
    for line in open(cpu_path):
        s, p, r, us = line.rstrip("\n").split("\t")
        n = requests.get((s, p, r), 0)
        if n > 0:
            cpu.setdefault((s, p), []).append(int(us) / n)

    def cpu_med(s, p):
        v = cpu.get((s, p))
        return f"{statistics.median(v):.1f}" if v else "-"

    def med(s, p, i):
        return statistics.median(x[i] for x in rows[(s, p)])

    out = []
    out.append(f"tokengate vs nginx and HAProxy, {mode} mode: {rounds} interleaved rounds x {dur} s per run; medians.\n")
    out.append("| scenario | proxy | req/s | p50 ms | p99 ms | proxy CPU µs/req | errors |")
    out.append("|---|---|---:|---:|---:|---:|---:|")
    verdicts = []
    scenarios = [s for s in ("h1", "h2", "newconn", "resume", "h1rate", "h2rate") if any(k[0] == s for k in rows)]
    for s in scenarios:
        for p in ("nginx", "haproxy", "tokengate", "tokengate-nometrics"):
            if (s, p) in rows:
                errs = sum(x[4] for x in rows[(s, p)])
                out.append(
                    f"| {NAMES[s]} | {p} | {med(s, p, 0):,.0f} | {med(s, p, 1):.2f} | {med(s, p, 2):.2f} | {cpu_med(s, p)} | {errs} |"
                )
        if s in FIXED_RATE:
            # A peer that fell behind the rate or answered with errors spent
            # less for it: it is not the one to compare with.
            def kept_pace(p):
                return (cpu.get((s, p)) and sum(x[4] for x in rows[(s, p)]) == 0
                        and med(s, p, 0) >= 0.95 * RATE)
            peers = [p for p in ("nginx", "haproxy") if (s, p) in rows and kept_pace(p)]
            if (s, "tokengate") not in rows or not cpu.get((s, "tokengate")) or not peers:
                verdicts.append(f"- {NAMES[s]}: no CPU comparison (tokengate or every peer has no CPU figures, "
                                f"errors, or served under 95 % of {RATE:,} req/s)")
                continue
            best = min(peers, key=lambda p: statistics.median(cpu[(s, p)]))
            t, b = statistics.median(cpu[(s, "tokengate")]), statistics.median(cpu[(s, best)])
            verdicts.append(
                f"- {NAMES[s]}: CPU per request tokengate / best ({best}) = **{t / b:.2f}x** "
                f"({t:.1f} vs {b:.1f} µs; served {med(s, 'tokengate', 0):,.0f} vs {med(s, best, 0):,.0f} req/s), "
                f"p99 {med(s, 'tokengate', 2):.2f} ms vs {med(s, best, 2):.2f} ms"
            )
            continue
        best = max(("nginx", "haproxy"), key=lambda p: med(s, p, 0))
        ratio = med(s, "tokengate", 0) / med(s, best, 0)
        cpu_ratio = ""
        try:
            cpu_ratio = f", CPU per request {float(cpu_med(s, 'tokengate')) / float(cpu_med(s, best)):.2f}x"
        except (TypeError, ValueError, ZeroDivisionError):
            pass
        verdicts.append(
            f"- {NAMES[s]}: tokengate / best ({best}) = **{ratio:.2f}x** req/s{cpu_ratio}, "
            f"p99 {med(s, 'tokengate', 2):.2f} ms vs {med(s, best, 2):.2f} ms"
        )
    for s in scenarios:
        if (s, "tokengate-nometrics") in rows and s in FIXED_RATE:
            on, off = cpu_med(s, "tokengate"), cpu_med(s, "tokengate-nometrics")
            try:
                verdicts.append(f"- {NAMES[s]}: metrics on / off = **{float(on) / float(off):.3f}x** CPU per request "
                                f"({on} vs {off} µs)")
            except (ValueError, ZeroDivisionError):
                pass
        elif (s, "tokengate-nometrics") in rows:
            on, off = med(s, "tokengate", 0), med(s, "tokengate-nometrics", 0)
            verdicts.append(
                f"- {NAMES[s]}: metrics on / off = **{on / off:.3f}x** req/s "
                f"({on:,.0f} vs {off:,.0f}), CPU µs/req {cpu_med(s, 'tokengate')} vs {cpu_med(s, 'tokengate-nometrics')}"
            )
    # How much of the machine the resume clients took (CPU seconds per second
    # of run, median over rounds; 2 would be both cores), and the resumption
    # checks before and after the rounds.
    if client_cpu_path:
        try:
            client = {}
            client_per_req = {}
            for line in open(client_cpu_path):
                sc, p, r, us = line.rstrip("\n").split("\t")
                client.setdefault((sc, p), []).append(int(us) / 1e6 / float(dur))
                if requests.get((sc, p, r), 0) > 0:
                    client_per_req.setdefault((sc, p), []).append(int(us) / requests[(sc, p, r)])
            for (sc, p), v in sorted(client.items()):
                who = "the two curl clients" if RESUME_CLIENT == "curl" else "the load client (loadgen)"
                per = client_per_req.get((sc, p))
                per = f" ({statistics.median(per):.0f} µs per request)" if per else ""
                verdicts.append(f"- {NAMES.get(sc, sc)}: {who} took {statistics.median(v):.2f} CPUs{per} against {p}")
        except OSError:
            pass
    if resumed_path:
        try:
            checks = [line.rstrip("\n").split("\t") for line in open(resumed_path)]
            if checks:
                how = ("40 connections one after another; the first has no ticket yet" if RESUME_CLIENT == "curl"
                       else "handshakes that resumed, of all in the run; each of the 50 workers' first has no ticket yet")
                verdicts.append(f"- resumption check ({how}): "
                                + ", ".join(f"{p} {n}/{t} resumed ({w})" for p, w, n, t in checks))
        except OSError:
            pass
    if ("exchange", "tokengate") in rows:
        rps = med("exchange", "tokengate", 0)
        errs = sum(x[4] for x in rows[("exchange", "tokengate")])
        out.append(
            f"| {NAMES['exchange']} | tokengate | {rps:,.0f} | {med('exchange', 'tokengate', 1):.2f} | "
            f"{med('exchange', 'tokengate', 2):.2f} | - | {errs} |"
        )
        verdicts.append(f"- token exchanges: **{rps:,.0f}/s**")
    idle_mb = int(rss_idle_kb) / 1024.0
    verdicts.append(f"- RSS idle: **{idle_mb:.1f} MB**")
    n, live = int(exchanges), int(live)
    if n > 0 and live > 0:
        per = (int(rss_loaded_kb) - int(rss_idle_kb)) * 1024.0 / live
        verdicts.append(
            f"- RSS after {n:,} exchanges ({live:,} access tokens live, from the admin API's stats): "
            f"{int(rss_loaded_kb) / 1024.0:.1f} MB, "
            f"**{per:.0f} bytes per live token** over idle (includes connection buffers and allocator slack)"
        )
    out.append("")
    out.extend(verdicts)
    print("\n".join(out))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"parse-wrk": parse_wrk, "parse-h2load": parse_h2load, "parse-ab": parse_ab, "parse-curl": parse_curl, "parse-loadgen": parse_loadgen, "table": table}[cmd](*args)
