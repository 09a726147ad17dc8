"""`python -m bpttcli` and the `bptt` script: the command line, with Ctrl-C during start-up (while torch is
still importing) a silent exit 130 rather than a traceback. A process torchrun started ends through
`launch.run_and_exit`."""

import os
import sys


def main() -> None:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.exit(130)
    if "WORLD_SIZE" not in os.environ:  # not started by torchrun
        run()
        return
    from .launch import run_and_exit

    run_and_exit(run)


if __name__ == "__main__":
    main()
