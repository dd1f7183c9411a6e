"""DPA's Python example through `tokengate agent`: no token code at all.

Start the agent first (see README.md), then:

    python3 examples/agent/python-through-agent.py [http://127.0.0.1:8080]

It polls the monitor information once a second and prints each answer's
status; the agent keeps the access token valid across expiry, gateway
restarts and rotations.
"""

import sys
import time

import requests

base = (sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080").rstrip("/")
session = requests.Session()
while True:
    r = session.get(base + "/iwc/api/databases/monitor-information", timeout=60)
    if r.status_code == 502 and r.headers.get("content-type") == "application/json":
        # The agent's own answer: its refresh token was refused, or the
        # gateway is unreachable. It says which.
        sys.exit(f"agent: {r.json()['error_description']}")
    print(r.status_code, len(r.content), "bytes", flush=True)
    time.sleep(1)
