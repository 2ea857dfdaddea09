"""The no-secrets check: nothing a fake upstream issued or accepted appears where it must not."""

from __future__ import annotations

from collections.abc import Iterable

from tests.support.config import PASSWORD
from tokend.testing.fake_sddc import FakeSddc


def secrets_of(fakes: Iterable[FakeSddc]) -> set[str]:
    """The test password, and every password, API key, access token and refresh id of ``fakes``."""
    secrets = {PASSWORD}
    for fake in fakes:
        secrets.update(fake.users.values())
        secrets.update(fake.api_keys)
        secrets.update(fake.issued_access_tokens)
        secrets.update(fake.issued_refresh_ids)
    return {s for s in secrets if s}


def assert_no_secrets(text: str, fakes: Iterable[FakeSddc], where: str) -> None:
    """No secret of :func:`secrets_of` appears in ``text``; ``where`` names the text on failure."""
    leaked = [s[:12] + "..." for s in secrets_of(fakes) if s in text]
    assert not leaked, f"secrets leaked into {where}: {leaked}"
