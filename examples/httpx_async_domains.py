"""Ask the SDDC Manager for its domains and each domain's detail, concurrently, with ``httpx``.

    TOKEND_SOCKET=/run/tokend/tokend.sock SDDC_CA_FILE=/etc/tokend/vcf-ca.pem \\
        python examples/httpx_async_domains.py

``TokendHttpxAuth`` works with ``httpx.AsyncClient`` without blocking the event loop: it asks
tokend over httpx's own Unix-socket transport, adds the token to requests for the target's origin
only, and after a 401 reports the token and retries once. Needs ``pip install 'tokend[httpx]'``.
"""

from __future__ import annotations

import asyncio
import os
import ssl

import httpx

from tokend.client import AsyncClient, TokendHttpxAuth


async def main() -> None:
    target = os.environ.get("TOKEND_TARGET")  # default: tokend's default target
    async with AsyncClient(target=target) as tokend:
        base = await tokend.url()  # the target's url, as configured in tokend
    ca = os.environ.get("SDDC_CA_FILE")
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
    async with httpx.AsyncClient(base_url=base, auth=TokendHttpxAuth(target=target),
                                 verify=verify, timeout=30) as sddc:
        page = (await sddc.get("/v1/domains")).raise_for_status().json()
        # The same call a few times at once: one token from tokend serves them all.
        again = await asyncio.gather(*(sddc.get("/v1/domains") for _ in range(5)))
        assert all(answer.status_code == 200 for answer in again)
    for domain in page["elements"]:
        print(domain["name"], domain["type"], domain["status"])


if __name__ == "__main__":
    asyncio.run(main())
