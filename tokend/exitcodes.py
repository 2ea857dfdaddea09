"""The exit statuses of the ``tokend`` command (the table in :mod:`tokend.cli`), and how a command
reports a failure: one ``tokend: ...`` line on stderr.
"""

from __future__ import annotations

import sys

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
# Answers of the socket API that mean the request itself was wrong: exit 2, not 1.
USAGE_STATUSES = (400, 404)


def fail(message: str, status: int = EXIT_FAIL) -> int:
    """Print ``tokend: message`` on stderr; return ``status`` (an exit status), for ``return fail(...)``."""
    print(f"tokend: {message}", file=sys.stderr)
    return status
