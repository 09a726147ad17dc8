"""`python -m bpttcli` and the `bptt` script: the command line, with Ctrl-C during start-up (while torch is
still importing) a silent exit 130 rather than a traceback."""

import sys


def main() -> None:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
