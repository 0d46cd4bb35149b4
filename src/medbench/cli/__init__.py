"""The `medbench` command: a thin shell over the Python API.

Each subcommand lives in its own module under `medbench.cli.commands` and exposes
`NAME`, `HELP`, `ORDER`, `add_arguments(parser)` and `run(args) -> int`, and may expose
`resume_hint(args) -> str | None` (what to type to continue after Ctrl-C). They are
discovered here, so adding a command never touches this file.

Only the command being run is imported: the others are listed in `medbench --help` from
the NAME, HELP and ORDER literals of their source, so the help and a mistyped flag answer
without loading PyTorch for every command.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import os
import pkgutil
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from medbench import __version__
from medbench.cli import commands
from medbench.errors import MedbenchError, MedbenchWarning

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
_SUMMARY_KEYS = ("NAME", "HELP", "ORDER")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 2 (argparse's own code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"medbench: error: {message} (see '{self.prog} --help')\n")


@dataclass(frozen=True)
class CommandSummary:
    """What `medbench --help` lists of a command, read without importing it."""

    module: str  # medbench.cli.commands.<name>
    name: str
    help: str
    order: int


def command_summaries() -> list[CommandSummary]:
    """Every command module's summary, in help order."""
    found = [
        command_summary(f"{commands.__name__}.{m.name}")
        for m in pkgutil.iter_modules(commands.__path__)
        if not m.name.startswith("_")
    ]
    return sorted(found, key=lambda s: (s.order, s.name))


def command_summary(module: str) -> CommandSummary:
    """`module`'s NAME, HELP and ORDER from the literals in its source (imported only where
    one of them is computed)."""
    spec = importlib.util.find_spec(module)
    values = _source_literals(spec.origin) if spec and spec.origin else {}
    if set(values) != set(_SUMMARY_KEYS):
        mod = importlib.import_module(module)
        values = {key: getattr(mod, key) for key in _SUMMARY_KEYS}
    return CommandSummary(module, str(values["NAME"]), str(values["HELP"]), int(values["ORDER"]))


def _source_literals(path: str) -> dict[str, Any]:
    """The module-level `NAME = <literal>` (and HELP, ORDER) assignments of a source file."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    values: dict[str, Any] = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        target = node.targets[0]
        if isinstance(target, ast.Name) and target.id in _SUMMARY_KEYS:
            with contextlib.suppress(ValueError):  # computed, not a literal
                values[target.id] = ast.literal_eval(node.value)
    return values


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `command` (a command's name, or "" for none), only that
    command's options are loaded and the others are listed by name and help."""
    parser = _Parser(
        prog="medbench",
        description=(
            "Train, compare, tune, ensemble and report deep-learning models on the MedMNIST "
            "medical-image datasets. Start with 'medbench benchmark' (the whole study in one "
            "command) or 'medbench datasets'."
        ),
    )
    parser.add_argument("--version", action="version", version=f"medbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for summary in command_summaries():
        if command is not None and summary.name != command:
            sub.add_parser(summary.name, help=summary.help)
            continue
        mod = importlib.import_module(summary.module)
        p = sub.add_parser(
            mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP)
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _module=mod)
    return parser


def _requested_command(argv: Sequence[str]) -> str | None:
    """The command word of `argv` (its first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def interrupted_message(args: argparse.Namespace) -> str:
    """The line Ctrl-C ends a command with: what to run to continue, where it can."""
    mod: ModuleType | None = getattr(args, "_module", None)
    hint_of = getattr(mod, "resume_hint", _rerun_hint)
    hint = hint_of(args) if hint_of is not None else None
    return "medbench: interrupted" + (f"; {hint}" if hint else "")


def _rerun_hint(args: argparse.Namespace) -> str | None:
    """For a command that keeps its finished work in --out (and says nothing itself)."""
    out = getattr(args, "out", None)
    if out is None:
        return None
    return f"finished work is kept: run the same command again with --out {out} to resume"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # medbench's own warnings are for users: one line, no source location.
    if issubclass(category, MedbenchWarning):
        print(f"medbench: warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    # catch_warnings restores showwarning (and filters) afterwards, so callers that
    # embed main() (tests, notebooks) keep their own warning handling.
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            code = _main(sys.argv[1:] if argv is None else list(argv))
            sys.stdout.flush()  # here, so that a closed pipe is seen while it can be handled
            return code
        except BrokenPipeError:
            # The reader went away (`medbench ... | head`): as Python's docs recommend for
            # SIGPIPE, point stdout at devnull so that the flush at exit stays quiet.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1


def _main(argv: list[str]) -> int:
    parser = build_parser(_requested_command(argv) or "")
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args._run(args) or 0)
    except MedbenchError as exc:
        print(f"medbench: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(interrupted_message(args), file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
