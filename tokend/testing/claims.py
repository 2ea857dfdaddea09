"""The access tokens the fake SDDC Manager issues: their claims (bent on demand) and their signature.

Tokens are HS256 JWTs signed with a secret of the fake's own, shaped like the vendor's.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import jwt

from tokend.testing.faults import MalformedKind

ISSUER = "vcf-auth"
AUDIENCE = "sddc-services"
SCOPE = ["ADMIN", "OPERATOR", "VIEWER"]
# 10000-01-01T00:00:00Z: the first NumericDate past year 9999 (Python's datetime ends before it).
YEAR_10000 = 253402300800
# Kinds whose access token carries a claim tokend must cope with; the fake issues it like any other
# (it is in ``issued_access_tokens``, so leak checks look for it).
ODD_CLAIM_KINDS: frozenset[str] = frozenset(
    {"exp_milliseconds", "exp_after_9999", "exp_string", "exp_true", "exp_1e308"}
)


def access_claims(user: str, now: float, ttl: float, kind: MalformedKind | None = None) -> dict[str, Any]:
    """JWT claims for ``user``, issued at ``now`` (s since the epoch) for ``ttl`` seconds.

    Whole-second ``ttl`` gives integer claims, as the vendor's are. ``kind`` bends them for the
    malformed-answer faults (``expired``, ``iat_future``, ``no_exp`` and the odd ``exp`` kinds);
    other kinds leave them as they are.
    """
    iat: float = now
    if float(ttl).is_integer():
        ttl, iat = int(ttl), int(now)
    if kind == "expired":
        iat -= 2 * ttl + 60
    elif kind == "iat_future":
        iat += 3600
    claims: dict[str, Any] = {
        "jti": str(uuid.uuid4()),
        "iat": iat,
        "nbf": iat,
        "exp": iat + ttl,
        "sub": user,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "user": user,
        "name": user,
        "scope": list(SCOPE),
    }
    if kind == "no_exp":
        del claims["exp"]
    elif kind == "exp_milliseconds":
        claims["exp"] = iat * 1000
    elif kind == "exp_after_9999":
        claims["exp"] = YEAR_10000 + 3600
    elif kind == "exp_string":
        claims["exp"] = str(claims["exp"])
    elif kind == "exp_true":
        claims["exp"] = True
    elif kind == "exp_1e308":
        claims["exp"] = 1e308
    return claims


def sign(claims: Mapping[str, Any], secret: bytes) -> str:
    """``claims`` as a compact HS256 JWS signed with ``secret``."""
    return jwt.encode(dict(claims), secret, algorithm="HS256")
