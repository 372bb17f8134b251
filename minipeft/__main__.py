"""`python -m minipeft ...`: see minipeft.workshop.cli."""

from minipeft.workshop.cli import main

raise SystemExit(main())
