"""``python -m latchwire``: the latchwire command."""

from latchwire.cli import main

raise SystemExit(main())
