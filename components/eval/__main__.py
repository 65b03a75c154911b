"""`python -m components.eval …` runs the same CLI as `t2v eval …`."""

from components.eval.cli import main

raise SystemExit(main())
