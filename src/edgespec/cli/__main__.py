"""`python -m edgespec.cli`: the benchmark and the tests start commands this way, with the
interpreter they run under."""

from edgespec.cli import main

raise SystemExit(main())
