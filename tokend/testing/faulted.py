"""The fake's answer to one call under its faults: a delay, an outage, a dropped connection, a
redirect or a scripted failure, else the endpoint's own answer.

What can go wrong is :mod:`tokend.testing.faults` (no I/O); this module acts it out on a request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from tokend.testing.faults import TOKEN_OPERATIONS, Faults, Route, ScriptedFault
from tokend.testing.wire import drop, drop_mid_response, echo, error_body, error_response, json_response

#: An endpoint of the fake: a request in, its answer out.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def answer_with_faults(faults: Faults, request: web.Request, operation: Route,
                             handler: Handler) -> web.StreamResponse:
    """The answer to one call of ``operation``: ``handler``'s, unless ``faults`` say otherwise.

    After a dropped connection, the answer returned is one that cannot be sent.
    """
    delay = faults.delay_for(operation)
    if delay > 0:
        await asyncio.sleep(delay)
    if faults.down and operation in TOKEN_OPERATIONS:
        if faults.down_mode == "drop":
            return drop(request)
        return error_response(
            503, "SERVICE_UNAVAILABLE", "The service is temporarily unavailable", "Retry later."
        )
    fault = faults.peek(operation)
    if fault is None or fault.kind == "malformed":
        return await handler(request)  # a malformed fault is taken on the success path
    faults.consume(fault)
    if fault.kind == "drop":
        return await drop_mid_response(request) if fault.drop_when == "headers" else drop(request)
    if fault.kind == "redirect":
        return web.Response(status=fault.status, headers={"Location": fault.location})
    return await _scripted_failure(faults, request, fault)

async def _scripted_failure(faults: Faults, request: web.Request, fault: ScriptedFault) -> web.Response:
    headers = fault.headers or None
    if isinstance(fault.body, str):
        return web.Response(status=fault.status, text=fault.body, headers=headers)
    if fault.body is not None:
        return json_response(fault.body, fault.status, headers)
    message = "An internal error occurred"
    if faults.echo_secrets_in_errors:
        message = f"{message} while processing {await echo(request)}"
    remediation = "Retry the operation; contact support if it persists."
    body = error_body("INTERNAL_SERVER_ERROR", message, remediation)
    return json_response(body, fault.status, headers)
