"""`python -m study.cli`: the `kd-study` command without its console script (e.g. from a checkout)."""

from study.cli.app import main

main()
