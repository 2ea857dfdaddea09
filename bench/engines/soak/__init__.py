"""The soak engine: ``tokend run`` against 2-second access tokens and random upstream faults.

``bench/soak.py`` is its command line (minutes long); ``tests/e2e/test_soak_short.py`` runs it for
a minute.

An in-process fake SDDC Manager (``FakeSddc(access_ttl=2)``, plain HTTP on loopback) issues tokens
and misbehaves at random (errors, 429 with Retry-After, dropped connections, outages, malformed
answers, revoked refresh tokens, redirects, delays) while several consumers poll tokend's socket:
plain ``GET /v1/token``, ``?format=raw``, ``?min_ttl=...`` and ``invalidate``. Every answer is checked
against what the fake issued. The report ends with the numbers that must be zero; the exit status is
1 when one of them is not, or when tokend's RSS grew more than ``--max-rss-growth-mb``.

Definitions (also printed with the report):

* A token's *window* is the span in which tokend must and may serve it, by SPEC §5.1 applied to what
  the fake sent: from the moment the fake finished answering with it (``delivered``) to
  ``received + span``, where ``received`` is when the fake received the request (tokend sent it no
  later) and ``span = min(exp - iat - 1, exp - Date - 1)`` (whole-second ``iat``; the ``Date``
  header is whole seconds too). With 2-second tokens the span is 1 s: tokend stops serving a token
  between ~0 and ~1 s before its ``exp``, which is why "the fake had issued an unexpired token" is not
  the test: a token in its last second is rightly not served.
* *Expired token served*: a 200 whose token's ``exp`` (on the fake's clock) had passed when the
  consumer sent the request, whose ``expiresIn`` is negative or not an integer, or that was served
  when its window had closed before the request was sent (certain violations: tokend answered after
  the request was sent). ``exp`` passing while the answer was in flight is counted apart
  (``expired in flight``), as is ``expiresIn == 0``: that is the whole seconds left, so a token with
  under a second left reads 0, and with 1-second windows nearly every answer does.
* *Consumer error while a valid token existed*: a non-200 answer to a request although some token
  was inside its window, shrunk at both ends by a ``--slack`` (default 0.1 s) plus the longest stall
  seen within 2 s (this process's loop lag, or tokend's slowest plain answer), for delivery and
  measurement latency: for a plain GET over the whole request; for a waiting request (``min_ttl``,
  ``invalidate``) at some instant of the request at which the token still had more than ``min_ttl``
  to go. Only a token tokend could answer with counts: not one superseded by a newer token before
  the request, and for ``invalidate`` only a token newer than the reported one.
"""

from bench.engines.soak.params import ACCESS_TTL, DEFAULT_CONSUMERS, DEFAULT_SLACK, TARGET
from bench.engines.soak.report import MUST_BE_ZERO, Report
from bench.engines.soak.run import run_soak

__all__ = ["ACCESS_TTL", "DEFAULT_CONSUMERS", "DEFAULT_SLACK", "MUST_BE_ZERO", "TARGET", "Report",
           "run_soak"]
