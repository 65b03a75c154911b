"""`python -m flows …`: the same as `t2v pipeline …`."""

from flows.cli import main

raise SystemExit(main())
