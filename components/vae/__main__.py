"""`python -m components.vae …` runs the same CLI as `t2v vae …`."""

from components.vae.cli import main

raise SystemExit(main())
