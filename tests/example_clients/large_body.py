"""POSTs a body of SIZE bytes with Python's `requests`, as a script that
mistakenly uploads a file would (tests/integration/exchange.rs). `requests` sends the
whole body before it reads a byte of the answer.

    large_body.py URL CAFILE SIZE declared|chunked [USER PASSWORD]

Prints one JSON line: {"status", "connection", "body"} when an answer was
read, or {"error"} when the connection failed; plus "sent", the bytes the
client handed to the socket.
"""

import json
import sys

import requests


class Body:
    """SIZE bytes of 'x', counted as they go out; `len()` gives the
    Content-Length (declared), iterating without it is sent chunked."""

    def __init__(self, size):
        self.size, self.sent = size, 0

    def __len__(self):
        return self.size

    def __iter__(self):
        chunk = b"x" * 65536
        for _ in range(self.size // len(chunk) + 1):
            n = min(len(chunk), self.size - self.sent)
            if n <= 0:
                return
            self.sent += n
            yield chunk[:n]


def main(argv):
    url, cafile, size, how = argv[1], argv[2], int(argv[3]), argv[4]
    auth = (argv[5], argv[6]) if len(argv) == 7 else None
    body = Body(size)
    data = body if how == "declared" else (c for c in body)
    content_type = "application/json" if auth else "application/x-www-form-urlencoded"
    try:
        r = requests.post(url, data=data, headers={"Content-Type": content_type},
                          auth=auth, verify=cafile, timeout=60)
        out = {"status": r.status_code, "connection": r.headers.get("connection"), "body": r.text}
    except requests.exceptions.RequestException as e:
        out = {"error": f"{type(e).__name__}: {e}"}
    out["sent"] = body.sent
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
