"""What the fake SDDC Manager puts on the wire, without state: the vendor's answer shapes, the forms
a refresh id arrives in, and broken connections.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tokend.names import BodyForm
from tokend.testing.faults import MalformedKind

#: How a refresh or revoke body carries the refresh token id: a JSON string, or the bare id.

UNAUTHORIZED_MESSAGE = "Authorization Header is missing or not in correct format"

_REFERENCE_ALPHABET = string.ascii_uppercase + string.digits


def reference_token() -> str:
    """A random six-character upper-case reference token, like the ones SDDC Manager logs."""
    return "".join(secrets.choice(_REFERENCE_ALPHABET) for _ in range(6))


def error_body(error_code: str, message: str, remediation: str) -> dict[str, str]:
    """An ``Error`` object as SDDC Manager sends it, with a fresh ``referenceToken``."""
    return {
        "errorCode": error_code,
        "message": message,
        "remediationMessage": remediation,
        "referenceToken": reference_token(),
    }


def json_response(body: object, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    """``body`` as ``application/json`` with ``status`` and extra ``headers``."""
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def error_response(status: int, code: str, message: str, remediation: str) -> web.Response:
    """An ``Error`` object answer (see :func:`error_body`)."""
    return json_response(error_body(code, message, remediation), status)


def body_form(body: bytes) -> BodyForm | None:
    """How a refresh or revoke body carries the id: a JSON string, the bare id, or neither."""
    try:
        value = json.loads(body)
    except ValueError:
        text = body.decode(errors="replace").strip()
        return "bare" if text and not any(c in text for c in "\"{}[] \t") else None
    return "json_string" if isinstance(value, str) else None


async def echo(request: web.Request) -> str:
    """What the client sent that may hold a secret, for the echo-secrets fault."""
    body = (await request.read()).decode(errors="replace")
    auth = request.headers.get("Authorization")
    return f"{body} {auth}" if auth else body


def malformed_other(kind: MalformedKind) -> web.Response:
    """A broken 200 answer for endpoints that carry no token (revoke, domains)."""
    if kind == "not_json":
        return web.Response(status=200, text="<html>oops", content_type="text/html")
    return json_response({} if kind == "missing_fields" else 12345, 200)


def drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without answering.

    The returned response is never sent: aiohttp fails to write it to the closed transport and
    treats that as a client disconnect, quietly.
    """
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=503)


async def drop_mid_response(request: web.Request) -> web.StreamResponse:
    """Send a 200 status line, headers and part of the promised body, then close the connection."""
    headers = {"Content-Type": "application/json", "Content-Length": "256"}
    response = web.StreamResponse(status=200, headers=headers)
    await response.prepare(request)
    await response.write(b'{"accessToken": "eyJ')
    drop(request)
    return response


def page_of_domain() -> dict[str, Any]:
    """A one-domain ``PageOfDomain``, valid against the vendor's schema."""
    domain = {
        "id": "4f8b9a44-9b0e-4d3e-8c6a-2f0b7c1d9e01",
        "name": "sfo-m01",
        "orgName": "Rainpole",
        "status": "ACTIVE",
        "type": "MANAGEMENT",
        "ssoId": "c0a1f0e2-7c1b-4b5e-9f7c-1d2e3f4a5b6c",
        "ssoName": "vsphere.local",
        "isManagementSsoDomain": True,
        "vcenters": [{"id": "b7e4c1a2-3d4e-4f5a-8b6c-7d8e9f0a1b2c", "fqdn": "sfo-m01-vc01.rainpole.io"}],
        "clusters": [{"id": "d1e2f3a4-b5c6-4d7e-8f9a-0b1c2d3e4f5a", "name": "sfo-m01-cl01"}],
    }
    return {
        "elements": [domain],
        "pageMetadata": {"pageNumber": 0, "pageSize": 1, "totalElements": 1, "totalPages": 1},
    }
