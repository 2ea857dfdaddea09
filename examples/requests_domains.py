"""List the SDDC Manager's domains with ``requests``, authenticated by tokend.

    TOKEND_SOCKET=/run/tokend/tokend.sock SDDC_CA_FILE=/etc/tokend/vcf-ca.pem \\
        python examples/requests_domains.py

``TokendAuth`` adds tokend's token to requests for the target's origin only (the ``url`` tokend has
for it), and after a 401 reports the token to tokend and retries once with the new one. The script
never sees the password or the refresh token. Needs ``pip install 'tokend[requests]'``.
"""

from __future__ import annotations

import os

import requests

from tokend.client import Client, TokendAuth


def main() -> None:
    target = os.environ.get("TOKEND_TARGET")  # default: tokend's default target
    base = Client(target=target).url()  # the target's url, as configured in tokend
    # Per request: requests lets REQUESTS_CA_BUNDLE override a session-wide `verify`.
    verify: str | bool = os.environ.get("SDDC_CA_FILE") or True
    with requests.Session() as session:
        session.auth = TokendAuth(target=target)
        answer = session.get(f"{base}/v1/domains", verify=verify, timeout=30)
        answer.raise_for_status()
        for domain in answer.json()["elements"]:
            print(domain["name"], domain["type"], domain["status"])


if __name__ == "__main__":
    main()
