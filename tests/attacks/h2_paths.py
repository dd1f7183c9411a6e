#!/usr/bin/env python3
"""Raw HTTP/2 `:path` values against a tokengate public listener, for
tests/integration/path_confusion.rs: the paths that hyper's client cannot send as they
are (a raw backslash, control bytes, bytes that are not UTF-8, `#`, no
leading `/`).

Reads one JSON object on stdin:

  {"port": P, "cafile": "...", "token": "...", "paths": ["<hex>", ...]}

and sends `GET` with each path, byte for byte (the `h2` package with its
header validation and normalisation off), one stream at a time over TLS with
ALPN h2 to 127.0.0.1 only. Writes one JSON array on stdout, one entry per
path, in order: {"status": 200, "body": "<hex>"} or {"status": null,
"error": "..."} when the stream was reset, the connection ended or nothing
came within 10 s. A new connection is opened after the server ends one.
Bodies are cut at 256 KiB.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events

HOST = "127.0.0.1"  # never anything else
ANSWER_TIMEOUT = 10.0
MAX_BODY = 256 * 1024


class Conn:
    def __init__(self, port: int, cafile: str) -> None:
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection((HOST, port), timeout=ANSWER_TIMEOUT)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        if self.sock.selected_alpn_protocol() != "h2":
            raise RuntimeError("the server did not choose h2")
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())
        self.open = True

    def get(self, path: bytes, token: str) -> dict:
        stream = self.h2.get_next_available_stream_id()
        self.h2.send_headers(
            stream,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path),
                (b"authorization", b"Bearer " + token.encode()),
            ],
            end_stream=True,
        )
        self.sock.sendall(self.h2.data_to_send())
        status, body = None, bytearray()
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (OSError, ssl.SSLError) as e:
                self.open = False
                return {"status": None, "error": f"connection: {e}"}
            if not data:
                self.open = False
                return {"status": None, "error": "connection closed"}
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    for k, v in event.headers:
                        if k == b":status":
                            status = int(v)
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    if len(body) < MAX_BODY:
                        body.extend(event.data)
                    self.h2.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    self.sock.sendall(self.h2.data_to_send())
                    return {"status": status, "body": body.hex()}
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                    self.sock.sendall(self.h2.data_to_send())
                    return {"status": None, "error": f"stream reset ({event.error_code!r})"}
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.open = False
                    return {"status": None, "error": f"GOAWAY ({event.error_code!r})"}
            self.sock.sendall(self.h2.data_to_send())
        self.open = False
        return {"status": None, "error": "no answer in time"}

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def main() -> int:
    job = json.load(sys.stdin)
    results = []
    conn = None
    for p in job["paths"]:
        path = bytes.fromhex(p)
        try:
            if conn is None or not conn.open:
                if conn is not None:
                    conn.close()
                conn = Conn(job["port"], job["cafile"])
            results.append(conn.get(path, job["token"]))
        except Exception as e:  # a protocol error from h2 is this path's outcome
            if conn is not None:
                conn.open = False
            results.append({"status": None, "error": f"{type(e).__name__}: {e}"})
    if conn is not None:
        conn.close()
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
