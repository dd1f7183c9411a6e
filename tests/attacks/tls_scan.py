#!/usr/bin/env python3
"""TLS scan of tokengate listeners with sslyze's Python API (127.0.0.1 only).

Asserted, per listener:
  * no protocol below TLS 1.2 accepted (SSL 2.0, SSL 3.0, TLS 1.0, TLS 1.1 all rejected);
  * no CBC cipher suite accepted;
  * no cipher suite without forward secrecy (TLS 1.2 suites must be ECDHE or DHE);
  * no insecure renegotiation (no client-initiated renegotiation, and RFC 5746
    secure renegotiation signalled or renegotiation refused altogether);
  * no TLS compression.
Noted, not asserted: OCSP stapling, HSTS, and what else the scan saw
(TLS 1.3 early data, session resumption, curves, Heartbleed, ROBOT, CCS injection,
extended master secret, certificate trust against --cafile).

Prints a summary table; exits non-zero, naming every failed check, if any failed.

  tls_scan.py --port public=8443 --port admin=8444 [--cafile certs/tokengate.crt]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from sslyze import (
    CertificateInfoExtraArgument,
    ScanCommand,
    ScanCommandAttemptStatusEnum,
    ScanCommandsExtraArguments,
    Scanner,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)

HOST = "127.0.0.1"  # never anything else

# sslyze's bundled trust stores hold an old root with a negative serial number.
warnings.filterwarnings("ignore", message="Parsed a serial number which wasn't positive")

OLD_PROTOCOLS = [
    ("SSL 2.0", ScanCommand.SSL_2_0_CIPHER_SUITES),
    ("SSL 3.0", ScanCommand.SSL_3_0_CIPHER_SUITES),
    ("TLS 1.0", ScanCommand.TLS_1_0_CIPHER_SUITES),
    ("TLS 1.1", ScanCommand.TLS_1_1_CIPHER_SUITES),
]
MODERN_PROTOCOLS = [
    ("TLS 1.2", ScanCommand.TLS_1_2_CIPHER_SUITES),
    ("TLS 1.3", ScanCommand.TLS_1_3_CIPHER_SUITES),
]
NOTED = [
    ScanCommand.CERTIFICATE_INFO,
    ScanCommand.HTTP_HEADERS,
    ScanCommand.TLS_1_3_EARLY_DATA,
    ScanCommand.SESSION_RESUMPTION,
    ScanCommand.ELLIPTIC_CURVES,
    ScanCommand.HEARTBLEED,
    ScanCommand.ROBOT,
    ScanCommand.OPENSSL_CCS_INJECTION,
    ScanCommand.TLS_EXTENDED_MASTER_SECRET,
    ScanCommand.TLS_FALLBACK_SCSV,
]
ASSERTED = [c for _, c in OLD_PROTOCOLS + MODERN_PROTOCOLS] + [
    ScanCommand.SESSION_RENEGOTIATION,
    ScanCommand.TLS_COMPRESSION,
]


def parse_port(text: str) -> tuple[str, int]:
    name, _, port = text.rpartition("=")
    try:
        n = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 0 < n < 65536:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}")
    return (name or str(n), n)


def result_of(scan, command: ScanCommand):
    """The command's result, or raises naming why sslyze could not run it."""
    attempt = getattr(scan, command.value)
    if attempt.status != ScanCommandAttemptStatusEnum.COMPLETED:
        reason = attempt.error_reason.name if attempt.error_reason else attempt.status.name
        trace = "".join(attempt.error_trace.format()) if attempt.error_trace else ""
        raise RuntimeError(f"{command.value} did not complete: {reason}\n{trace}")
    return attempt.result


def is_forward_secret(name: str) -> bool:
    # TLS 1.3 suites (TLS_AES_*, TLS_CHACHA20_*) always use (EC)DHE key exchange.
    return name.startswith(("TLS_ECDHE_", "TLS_DHE_")) or "_WITH_" not in name


def check_listener(label: str, port: int, server) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Rows (check, result, verdict) and the failures of one listener."""
    rows: list[tuple[str, str, str]] = []
    failures: list[str] = []

    def row(check: str, result: str, ok: bool | None) -> None:
        verdict = "note" if ok is None else ("ok" if ok else "FAIL")
        rows.append((check, result, verdict))
        if ok is False:
            failures.append(f"{label}: {check}: {result}")

    if server.scan_status != ServerScanStatusEnum.COMPLETED or server.scan_result is None:
        trace = (
            "".join(server.connectivity_error_trace.format())
            if server.connectivity_error_trace
            else ""
        )
        row("connectivity", f"{server.connectivity_status.name} {trace}".strip(), False)
        return rows, failures
    scan = server.scan_result

    accepted_all = []  # every suite accepted with any protocol version
    for name, cmd in OLD_PROTOCOLS:
        r = result_of(scan, cmd)
        acc = [s.cipher_suite.name for s in r.accepted_cipher_suites]
        accepted_all.extend(acc)
        row(f"{name} rejected", "rejected" if not acc else f"ACCEPTED: {', '.join(acc)}", not acc)
    for name, cmd in MODERN_PROTOCOLS:
        r = result_of(scan, cmd)
        acc = [s.cipher_suite.name for s in r.accepted_cipher_suites]
        accepted_all.extend(acc)
        row(f"{name} suites", ", ".join(acc) if acc else "not offered", None)
    if not any(result_of(scan, c).accepted_cipher_suites for _, c in MODERN_PROTOCOLS):
        row("TLS 1.2/1.3 accepted", "no suite accepted at all", False)
    cbc = [s for s in accepted_all if "CBC" in s]
    row("no CBC suites", "none" if not cbc else ", ".join(cbc), not cbc)
    no_fs = [s for s in accepted_all if not is_forward_secret(s)]
    row("forward secrecy only", "all (EC)DHE" if not no_fs else "NOT FS: " + ", ".join(no_fs), not no_fs)

    reneg = result_of(scan, ScanCommand.SESSION_RENEGOTIATION)
    insecure = reneg.is_vulnerable_to_client_renegotiation_dos or (
        not reneg.supports_secure_renegotiation and reneg.client_renegotiations_success_count > 0
    )
    row(
        "no insecure renegotiation",
        f"secure_renegotiation(RFC 5746)={reneg.supports_secure_renegotiation} "
        f"client_initiated_accepted={reneg.client_renegotiations_success_count} "
        f"client_reneg_dos={reneg.is_vulnerable_to_client_renegotiation_dos}",
        not insecure,
    )
    comp = result_of(scan, ScanCommand.TLS_COMPRESSION)
    row("no TLS compression", "supported!" if comp.supports_compression else "not supported",
        not comp.supports_compression)

    # Noted only.
    def note(check: str, fn) -> None:
        try:
            row(check, fn(), None)
        except RuntimeError as e:
            row(check, f"not scanned: {str(e).splitlines()[0]}", None)

    def ocsp() -> str:
        cert = result_of(scan, ScanCommand.CERTIFICATE_INFO)
        d = cert.certificate_deployments[0]
        if d.ocsp_response is None:
            return "no OCSP response stapled"
        return f"stapled ({d.ocsp_response.response_status.name}, trusted={d.ocsp_response_is_trusted})"

    def trust() -> str:
        cert = result_of(scan, ScanCommand.CERTIFICATE_INFO)
        d = cert.certificate_deployments[0]
        leaf = d.received_certificate_chain[0]
        out = [f"chain={len(d.received_certificate_chain)} subject={leaf.subject.rfc4514_string()}"]
        for v in d.path_validation_results:
            out.append(f"{v.trust_store.name}:{'valid' if v.was_validation_successful else 'untrusted'}")
        return " ".join(out)

    def hsts() -> str:
        h = result_of(scan, ScanCommand.HTTP_HEADERS)
        if h.http_error_trace:
            return "HTTP request failed: " + "".join(h.http_error_trace.format_exception_only()).strip()
        s = h.strict_transport_security_header
        if s is None:
            return "no Strict-Transport-Security header"
        return f"max-age={s.max_age} includeSubDomains={s.include_subdomains} preload={s.preload}"

    note("OCSP stapling", ocsp)
    note("HSTS", hsts)
    note("certificate", trust)
    note("TLS 1.3 early data", lambda: "accepted" if result_of(scan, ScanCommand.TLS_1_3_EARLY_DATA).supports_early_data else "not accepted")
    note(
        "session resumption",
        lambda: (lambda r: f"session_id={r.session_id_resumption_result.name} tickets={r.tls_ticket_resumption_result.name}")(
            result_of(scan, ScanCommand.SESSION_RESUMPTION)
        ),
    )
    note(
        "elliptic curves",
        lambda: ", ".join(c.name for c in (result_of(scan, ScanCommand.ELLIPTIC_CURVES).supported_curves or [])) or "none",
    )
    note("Heartbleed", lambda: "VULNERABLE" if result_of(scan, ScanCommand.HEARTBLEED).is_vulnerable_to_heartbleed else "not vulnerable")
    note("ROBOT", lambda: result_of(scan, ScanCommand.ROBOT).robot_result.name)
    note("CCS injection", lambda: "VULNERABLE" if result_of(scan, ScanCommand.OPENSSL_CCS_INJECTION).is_vulnerable_to_ccs_injection else "not vulnerable")
    note("extended master secret", lambda: "supported" if result_of(scan, ScanCommand.TLS_EXTENDED_MASTER_SECRET).supports_ems_extension else "not supported")
    note("TLS_FALLBACK_SCSV", lambda: "supported" if result_of(scan, ScanCommand.TLS_FALLBACK_SCSV).supports_fallback_scsv else "not supported")
    return rows, failures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=parse_port, action="append", required=True,
                   help="a listener on 127.0.0.1, as PORT or NAME=PORT; repeat for several")
    p.add_argument("--sni", default="localhost", help="server name to send (default localhost)")
    p.add_argument("--cafile", type=Path, help="also validate the certificate against this PEM (noted only)")
    args = p.parse_args()

    extra = ScanCommandsExtraArguments()
    if args.cafile:
        extra = ScanCommandsExtraArguments(certificate_info=CertificateInfoExtraArgument(custom_ca_file=args.cafile))
    requests = {}
    queue = []
    for label, port in args.port:
        req = ServerScanRequest(
            server_location=ServerNetworkLocation(hostname=args.sni, port=port, ip_address=HOST),
            network_configuration=ServerNetworkConfiguration(tls_server_name_indication=args.sni),
            scan_commands=set(ASSERTED + NOTED),
            scan_commands_extra_arguments=extra,
        )
        requests[req.uuid] = (label, port)
        queue.append(req)
    started = time.monotonic()
    scanner = Scanner()
    scanner.queue_scans(queue)
    all_failures: list[str] = []
    for server in scanner.get_results():
        label, port = requests[server.uuid]
        rows, failures = check_listener(label, port, server)
        all_failures.extend(failures)
        print(f"\n== {label} listener, {HOST}:{port} (SNI {args.sni}) ==")
        w = max(len(r[0]) for r in rows)
        for check, result, verdict in rows:
            print(f"  {verdict:<4}  {check:<{w}}  {result}")
    print(f"\nscanned {len(requests)} listener(s) in {time.monotonic() - started:.1f} s")
    if all_failures:
        print("FAILED checks:", file=sys.stderr)
        for f in all_failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    print("all asserted checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
