"""`python -m components.dit …` runs the same CLI as `t2v dit …`."""

from components.dit.cli import main

raise SystemExit(main())
