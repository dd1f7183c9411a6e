"""A `requests` client for an API behind tokengate that keeps its access token fresh.

    import tokengate_client
    api = tokengate_client.session("https://gateway.example:8443",
                                   refresh_token, verify="certs/tokengate.crt")
    print(api.get("https://gateway.example:8443/iwc/api/databases/monitor-information").json())

`TokengateAuth` trades the refresh token for an access token on the first
request, sends it as `Authorization: bearer …`, and trades again

- shortly before the access token expires (by the `expires_in` of the
  exchange: when less than a quarter of its life, at most 60 s, is left), and
- once when a request is answered 401, then sends that request again. A 401
  means the gateway no longer knows the access token: it restarted (access
  tokens live in its memory only) or an administrator rotated the tokens. If
  the refresh token itself was deleted or expired, the new exchange fails
  with `RefreshTokenRejected` instead.

Nothing else is retried: a connection error or a 5xx is the caller's to handle.
Request bodies are sent again after a 401 (the gateway refused the request
before reading it on to the API); a body that is a generator cannot be, and
the 401 is returned as it came.

Run as a script, it calls the paths given on the command line (or, with none,
each path read from standard input, one per line) and prints each answer:

    TOKENGATE_REFRESH_TOKEN=tgr_… python3 tokengate_client.py \\
        --base-url https://127.0.0.1:8443 --cacert certs/tokengate.crt \\
        /iwc/api/databases/monitor-information
"""

import argparse
import json
import logging
import os
import sys
import threading
import time

import requests

#: DPA's token endpoint; tokengate answers at /token too.
TOKEN_PATH = "/iwc/api/security/oauth/token"
#: Trade again when this much of the access token's life is left, at most...
REFRESH_FRACTION = 0.25
#: ...and at most this many seconds before it expires.
REFRESH_MARGIN_MAX = 60.0

log = logging.getLogger("tokengate_client")


class RefreshTokenRejected(Exception):
    """The gateway refused the refresh token (`invalid_grant`): it was
    deleted, has expired, or was mistyped. Ask an administrator for a new one."""


class TokengateAuth(requests.auth.AuthBase):
    """`requests` authentication that trades a refresh token for access tokens.

    `base_url` is the gateway (`https://host:8443`); `verify` is passed to
    `requests` for the token exchange (a CA file, or True for the system's
    roots). `clock` returns seconds on a monotonic scale (tests move it).
    Safe to share between threads: one exchange at a time.
    """

    def __init__(self, base_url, refresh_token, verify=True, timeout=30.0,
                 clock=time.monotonic):
        self.token_url = base_url.rstrip("/") + TOKEN_PATH
        self._refresh_token = refresh_token
        self._verify = verify
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._access_token = None
        self._refresh_at = 0.0
        #: How many times the refresh token was traded (for logs and tests).
        self.exchanges = 0
        # Its own session: the exchange must not go through this auth again.
        self._http = requests.Session()

    def __repr__(self):
        # Never show a token.
        return f"TokengateAuth({self.token_url!r})"

    def _exchange(self, stale=None):
        """Trades the refresh token; `stale` is the access token a 401 refused
        (if another thread already replaced it, its token is used instead)."""
        with self._lock:
            if stale is not None and self._access_token not in (None, stale):
                return self._access_token
            started = self._clock()
            r = self._http.post(
                self.token_url,
                data={"grant_type": "refresh_token",
                      "refresh_token": self._refresh_token},
                verify=self._verify,
                timeout=self._timeout,
            )
            if r.status_code == 400 and _error(r) == "invalid_grant":
                self._access_token = None
                raise RefreshTokenRejected(_description(r))
            r.raise_for_status()
            answer = r.json()
            lifetime = float(answer["expires_in"])
            margin = min(lifetime * REFRESH_FRACTION, REFRESH_MARGIN_MAX)
            # Counted from before the request: the gateway's clock started
            # no earlier than that.
            self._refresh_at = started + lifetime - margin
            self._access_token = answer["access_token"]
            self.exchanges += 1
            log.info("exchanged the refresh token: access token valid for %d s",
                     lifetime)
            return self._access_token

    def _current(self):
        with self._lock:
            if self._access_token is not None and self._clock() < self._refresh_at:
                return self._access_token
        return self._exchange()

    def __call__(self, r):
        token = self._current()
        r.headers["Authorization"] = "bearer " + token
        # Where a file-like body starts, to send it again after a 401.
        try:
            r._tokengate_body_start = r.body.tell()
        except (AttributeError, OSError):
            r._tokengate_body_start = None
        r.register_hook("response", self._on_response)
        return r

    def _on_response(self, r, **kwargs):
        """Once per request: on a 401, trade again and resend."""
        if r.status_code != 401 or getattr(r.request, "_tokengate_retry", False):
            return r
        body = r.request.body
        if body is not None and not isinstance(body, (bytes, str)):
            start = getattr(r.request, "_tokengate_body_start", None)
            if start is None or not hasattr(body, "seek"):
                return r  # a stream that cannot be sent again
            body.seek(start)
        refused = r.request.headers.get("Authorization", "").partition(" ")[2]
        log.info("the gateway answered 401 (%s): exchanging the refresh token again",
                 r.headers.get("WWW-Authenticate", "no challenge"))
        token = self._exchange(stale=refused)
        # Read the refusal to its end, so its connection can carry the retry.
        _ = r.content
        r.close()
        retry = r.request.copy()
        retry._tokengate_retry = True
        retry.headers["Authorization"] = "bearer " + token
        again = r.connection.send(retry, **kwargs)
        again.history.append(r)
        again.request = retry
        return again


def _error(r):
    try:
        return r.json().get("error")
    except ValueError:
        return None


def _description(r):
    try:
        return r.json().get("error_description", r.text)
    except ValueError:
        return r.text


class _Session(requests.Session):
    """A Session whose own `verify` wins over REQUESTS_CA_BUNDLE and
    CURL_CA_BUNDLE (plain `requests` lets those replace it: psf/requests#3829)."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:
            settings["verify"] = self.verify
        return settings


def session(base_url, refresh_token, verify=True, **auth_options):
    """A `requests.Session` that authenticates every request at the gateway;
    `verify` (a CA file, or True for the system's roots) applies to all of them."""
    s = _Session()
    s.verify = verify
    s.auth = TokengateAuth(base_url, refresh_token, verify=verify, **auth_options)
    return s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-url", default=os.environ.get("TOKENGATE_URL",
                                                        "https://127.0.0.1:8443"),
                   help="the gateway (default: $TOKENGATE_URL or https://127.0.0.1:8443)")
    p.add_argument("--cacert", default=os.environ.get("TOKENGATE_CACERT"),
                   help="PEM file to trust for the gateway (default: $TOKENGATE_CACERT, "
                        "else the system's roots)")
    p.add_argument("paths", nargs="*",
                   help="paths to GET (default: read them from stdin, one per line)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(name)s: %(message)s")

    # From the environment, not the command line: arguments show in `ps`.
    refresh_token = os.environ.get("TOKENGATE_REFRESH_TOKEN")
    if not refresh_token:
        p.error("set TOKENGATE_REFRESH_TOKEN to the refresh token (tgr_…)")
    api = session(args.base_url, refresh_token, verify=args.cacert or True)

    paths = args.paths or (line.strip() for line in sys.stdin if line.strip())
    failed = False
    for path in paths:
        try:
            r = api.get(args.base_url.rstrip("/") + path, timeout=30)
            print(json.dumps({"path": path, "status": r.status_code, "body": r.text}),
                  flush=True)
            failed = failed or not r.ok
        except RefreshTokenRejected as e:
            print(json.dumps({"path": path, "error": "invalid_grant", "detail": str(e)}),
                  flush=True)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
