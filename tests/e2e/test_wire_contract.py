"""What tokend puts on the wire follows the vendor's OpenAPI spec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openapi_core import OpenAPI

from tests.support import Tokend, eventually
from tests.test_fake_sddc import SPEC_PATH, spec_request


async def test_every_request_tokend_sends_is_valid_against_the_vendor_spec(
        make_upstream: Callable[..., Any], make_tokend: Callable[..., Any]) -> None:
    upstream = await make_upstream(access_ttl=3)
    fake = upstream.fake
    tokend: Tokend = await make_tokend(upstream.url, upstream.ca_pem,
                                       target={"revoke_on_exit": True})
    await eventually(lambda: fake.count("refresh", 200) >= 1, 10, what="a refresh")
    assert await tokend.stop() == 0
    operations = {c.operation for c in fake.calls}
    assert {"login", "refresh", "revoke"} <= operations, operations
    openapi = OpenAPI.from_file_path(str(SPEC_PATH))
    for record in fake.calls:
        openapi.validate_request(spec_request(record))
        assert record.request_headers.get("Content-Type") == "application/json"
        assert "Authorization" not in record.request_headers  # the token endpoints take no bearer
    assert fake.count("revoke", 204) == 1
    assert not fake.refresh_ids, "revoke_on_exit left a live refresh token"
