"""List the SDDC Manager's domains with the vendor's Python SDK (``vmware-sddc-manager``).

    TOKEND_SOCKET=/run/tokend/tokend.sock REQUESTS_CA_BUNDLE=/etc/tokend/vcf-ca.pem \\
        python examples/sdk_domains.py

The SDK (a vAPI client over ``requests``) takes a bearer token as an OAuth security context on
its connector: the token comes from tokend's client instead of a login of the SDK's own, so the
script never holds the password, and any number of such scripts share tokend's one session. After
an ``Unauthenticated`` error the token is reported to tokend (``invalidate``: one refresh however
many report it) and the call is made once more with the new token. The SDK's requests honour
``REQUESTS_CA_BUNDLE`` for the SDDC Manager's CA. Needs ``pip install vmware-sddc-manager``.
"""

from __future__ import annotations

import os
from typing import Any

import requests
from com.vmware.vapi.std.errors_client import Unauthenticated
from vmware.sddc_manager.v1_client import Domains
from vmware.vapi.lib.connect import get_requests_connector
from vmware.vapi.security.oauth import create_oauth_security_context
from vmware.vapi.stdlib.client.factories import StubConfigurationFactory

from tokend.client import Client


def main() -> None:
    tokend = Client(target=os.environ.get("TOKEND_TARGET"))  # default: tokend's default target
    session = requests.Session()
    connector = get_requests_connector(session=session, msg_protocol="rest", url=tokend.url())
    domains = Domains(StubConfigurationFactory.new_std_configuration(connector))

    token = tokend.token()
    connector.set_security_context(create_oauth_security_context(token.access_token))
    try:
        page: Any = domains.get_domains()
    except Unauthenticated:  # the token was refused: report it, and try once with the new one
        token = tokend.invalidate(token.fingerprint)
        connector.set_security_context(create_oauth_security_context(token.access_token))
        page = domains.get_domains()
    for domain in page.elements:
        print(domain.name, domain.type, domain.status)


if __name__ == "__main__":
    main()
