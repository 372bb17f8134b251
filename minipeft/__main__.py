"""`python -m minipeft ...`: see minipeft.cli."""

from minipeft.cli import main

raise SystemExit(main())
