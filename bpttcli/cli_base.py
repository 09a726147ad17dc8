"""The command line's plumbing, apart from its commands: one-line usage errors, flags shown without a
value metavar, and option defaults read from the config's dataclass defaults."""

from __future__ import annotations

import enum
import functools
import sys
from pathlib import Path

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from .config import Config
from .errors import BpttError, exit_code
from .signals import signal_number
from .ui import console, stdout


class PlainMetavars:
    """In --help, a flag (--quiet, --help) shows no value metavar such as `<bool>`, and an argument with a
    metavar (RUN_DIR) no type such as `<list[Path]>` besides it."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
            elif param.param_type_name == "argument" and param.metavar:
                param.display_type_rich = lambda ctx: None
        return params


class Command(PlainMetavars, TyperCommand):
    pass


class Group(PlainMetavars, TyperGroup):
    pass


class OneLineUsageErrors(Group):
    """Report usage errors (an unknown option, a bad choice) on one line, like every other error."""

    def main(self, *args, **kwargs):
        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        try:
            result = super().main(*args, **{**kwargs, "standalone_mode": False})
        except typer.Abort:
            console.print("aborted")
            sys.exit(1)
        except Exception as exc:
            if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
                raise  # not a usage error: a bug, show the traceback
            if type(exc).__name__ == "NoArgsIsHelpError":
                stdout.print(exc.format_message(), highlight=False)
            else:
                ctx = getattr(exc, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                console.print(f"[red]error:[/] {escape(exc.format_message() + hint)}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        sys.exit(result if isinstance(result, int) else 0)


def friendly(command):
    """Print expected errors as one line and exit with their code; a stop signal exits silently with
    128 + its number; let anything else raise."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BpttError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            raise typer.Exit(exit_code(signal_number(exc))) from None

    return wrapper


DEFAULTS = Config()


def default(key: str) -> str:
    """' \\[default: 512]' for an option's help: the config's default for `key`, what a plain run uses."""
    value = functools.reduce(getattr, key.split("."), DEFAULTS)
    text = value.value if isinstance(value, enum.Enum) else f"{value:g}" if isinstance(value, float) else value
    return f" [dim]\\[default: {text}][/]"


def option_flags(keys: dict[str, str], options: dict) -> dict:
    """{config key: value} for the options given (None: not given), paths as strings."""
    return {key: str(v) if isinstance(v, Path) else v for name, key in keys.items() if (v := options[name]) is not None}
