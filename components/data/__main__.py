"""`python -m components.data …` runs the same CLI as `t2v data …`."""

from components.data.cli import main

raise SystemExit(main())
