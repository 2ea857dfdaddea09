"""`python -m tokend`."""

from tokend.cli import main

raise SystemExit(main())
