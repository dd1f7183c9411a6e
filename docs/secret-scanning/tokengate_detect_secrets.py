"""A detect-secrets plugin for tokengate tokens.

Finds refresh tokens (``tgr_``) whose CRC32 checksum holds, so a string of
the right shape with a wrong checksum (a typo, an example made up by hand)
is not reported, and access tokens (``tga_``) of the right shape (their MAC
needs the gateway's secret; only the gateway can check it).

    detect-secrets scan --plugin docs/secret-scanning/tokengate_detect_secrets.py

Found tokens can be reported to the gateway's ``POST /token/leaked``; see
README.md beside this file.
"""

import base64
import binascii
import re
import zlib
from typing import Generator

from detect_secrets.constants import VerifiedResult
from detect_secrets.plugins.base import RegexBasedDetector

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
REFRESH_PREFIX = "tgr_"
REFRESH_BODY_LEN = 44
CHECKSUM_LEN = 6
REFRESH_LEN = len(REFRESH_PREFIX) + REFRESH_BODY_LEN + CHECKSUM_LEN
ACCESS_PREFIX = "tga_"
ACCESS_RAW_LEN = 64
ACCESS_LEN = len(ACCESS_PREFIX) + 86


def _base62_fixed(n: int) -> str:
    digits = []
    for _ in range(CHECKSUM_LEN):
        digits.append(BASE62[n % 62])
        n //= 62
    return "".join(reversed(digits))


def refresh_token_checksum_ok(token: str) -> bool:
    """The tokengate refresh-token format, checksum included."""
    if len(token) != REFRESH_LEN or not token.startswith(REFRESH_PREFIX):
        return False
    if not all(c in BASE62 for c in token[len(REFRESH_PREFIX):]):
        return False
    head, checksum = token[:-CHECKSUM_LEN], token[-CHECKSUM_LEN:]
    return _base62_fixed(zlib.crc32(head.encode("ascii"))) == checksum


def access_token_shape_ok(token: str) -> bool:
    """The tokengate access-token format: 64 bytes in unpadded base64url."""
    if len(token) != ACCESS_LEN or not token.startswith(ACCESS_PREFIX):
        return False
    body = token[len(ACCESS_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "==")
    except (binascii.Error, ValueError):
        return False
    # Canonical: re-encoding gives the same characters (no stray bits).
    return len(raw) == ACCESS_RAW_LEN and base64.urlsafe_b64encode(raw).decode().rstrip("=") == body


class TokengateRefreshTokenDetector(RegexBasedDetector):
    """tokengate refresh tokens (``tgr_``) with a valid checksum."""

    secret_type = "tokengate refresh token"

    denylist = (
        re.compile(r"(?<![0-9A-Za-z_])(tgr_[0-9A-Za-z]{50})(?![0-9A-Za-z_])"),
    )

    def analyze_string(self, string: str) -> Generator[str, None, None]:
        for match in super().analyze_string(string):
            if refresh_token_checksum_ok(match):
                yield match

    def verify(self, secret: str) -> VerifiedResult:
        # Only the gateway knows whether a token is live; a wrong checksum
        # is certainly no token.
        if not refresh_token_checksum_ok(secret):
            return VerifiedResult.VERIFIED_FALSE
        return VerifiedResult.UNVERIFIED


class TokengateAccessTokenDetector(RegexBasedDetector):
    """tokengate access tokens (``tga_``) of the right shape."""

    secret_type = "tokengate access token"

    denylist = (
        re.compile(r"(?<![0-9A-Za-z_-])(tga_[0-9A-Za-z_-]{85}[AQgw])(?![0-9A-Za-z_-])"),
    )

    def analyze_string(self, string: str) -> Generator[str, None, None]:
        for match in super().analyze_string(string):
            if access_token_shape_ok(match):
                yield match

    def verify(self, secret: str) -> VerifiedResult:
        if not access_token_shape_ok(secret):
            return VerifiedResult.VERIFIED_FALSE
        return VerifiedResult.UNVERIFIED
