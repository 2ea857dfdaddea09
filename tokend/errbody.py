"""The one place that renders tokend's error answers, in the upstream's own Error shape."""

from __future__ import annotations

import json
import math

from aiohttp import web

from tokend.logs import REDACTOR


def error_body(code: str, message: str, remediation: str = "",
               reference_token: str | None = None) -> bytes:
    """``{"errorCode", "message", "remediationMessage", "referenceToken"}`` as bytes, redacted."""
    body: dict[str, str] = {"errorCode": code, "message": REDACTOR.text(message),
                            "remediationMessage": REDACTOR.text(remediation)}
    if reference_token:
        body["referenceToken"] = REDACTOR.text(reference_token)
    return json.dumps(body).encode()


def error_response(status: int, code: str, message: str, remediation: str = "",
                   reference_token: str | None = None, retry_after: float | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """An aiohttp response for an error; every 503 carries ``Retry-After``."""
    headers = dict(headers or {})
    if status == 503:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after or 5)))
    return web.Response(status=status, body=error_body(code, message, remediation, reference_token),
                        content_type="application/json", headers=headers)


def raw_http_error(status: int, reason: str, body: bytes) -> bytes:
    """A whole HTTP/1.1 response, for answers written before aiohttp sees the connection."""
    retry = "Retry-After: 1\r\n" if status == 503 else ""
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{retry}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body
