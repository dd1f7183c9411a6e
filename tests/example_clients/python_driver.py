"""Drives examples/python/tokengate_client.py for tests/integration/example_clients.rs
with a clock the test moves, so "refreshes before it expires" is checked
without waiting for a token to age.

argv: the base URL, the CA file, then clock offsets (seconds after the first
exchange) at which to GET /aged/<offset>. Prints one JSON line per step:
{"step", "status", "exchanges"}. Then waits for a line on stdin (the test
retires the access tokens meanwhile) and POSTs a body to /replayed, printing
its status, the body the upstream echoed, and the exchange count.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python"))
import tokengate_client  # noqa: E402

base, cacert, *offsets = sys.argv[1:]
now = [1000.0]
api = tokengate_client.session(base, os.environ["TOKENGATE_REFRESH_TOKEN"],
                               verify=cacert, clock=lambda: now[0])


def step(name, r):
    print(json.dumps({"step": name, "status": r.status_code,
                      "exchanges": api.auth.exchanges, "body": r.text}), flush=True)


step("first", api.get(base + "/first", timeout=30))
for offset in offsets:
    now[0] = 1000.0 + float(offset)
    step(offset, api.get(f"{base}/aged/{offset}", timeout=30))

sys.stdin.readline()
step("replayed", api.post(base + "/replayed", data=b"the same body twice", timeout=30))
