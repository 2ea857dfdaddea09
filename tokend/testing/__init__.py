"""A fake SDDC Manager for testing automation that talks to one: the token API and ``GET /v1/domains``,
served by a real aiohttp server on loopback, with faults on demand.

Needs the ``fake`` extra (``pip install 'tokend[fake]'``); the daemon never imports this package.

- :mod:`tokend.testing.fake_sddc`: :class:`~tokend.testing.fake_sddc.FakeSddc` (the server app, its
  users, tokens and call log) and :func:`~tokend.testing.fake_sddc.start_fake`;
- :mod:`tokend.testing.faults`: what :attr:`FakeSddc.faults` can do (errors, outages, delays, dropped
  connections, redirects, malformed answers, clock skew);
- :mod:`tokend.testing.tls`: a CA and a server certificate for HTTPS;
- :mod:`tokend.testing.claims`, :mod:`tokend.testing.wire`: the tokens and answers it sends;
- :mod:`tokend.testing.cli`: ``tokend fake-sddc``, the same fake as a process, for tests in any language.

From pytest (with pytest-asyncio, ``asyncio_mode = "auto"``), a fake per test on a free port::

    import pytest
    from tokend.testing.fake_sddc import FakeSddc, start_fake
    from tokend.testing.tls import ensure_tls_dir

    @pytest.fixture
    async def sddc(tmp_path):
        fake = FakeSddc(access_ttl=5, users={"svc@vsphere.local": "s3cret"})
        ssl_context = ensure_tls_dir(tmp_path / "tls")   # omit for plain HTTP
        runner, url = await start_fake(fake, ssl_context=ssl_context)
        yield fake, url                                    # trust tmp_path / "tls" / "ca.pem"
        await runner.cleanup()

    async def test_my_tool_logs_in_again_after_an_outage(sddc):
        fake, url = sddc
        fake.faults.fail_next("login", 503, count=2)
        ...                                                # run your automation against url
        assert fake.count("login", 201) == 1
"""
