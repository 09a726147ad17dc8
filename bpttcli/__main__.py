"""`python -m bpttcli`: the `bptt` command."""

from .cli import main

main()
