"""`python -m prefect_dr`: the same as the `prefect-dr` command."""

from prefect_dr.cli import main

raise SystemExit(main())
