"""The `medbench` command: a thin shell over the Python API.

Each subcommand lives in its own module under `medbench.commands` and exposes
`NAME`, `HELP`, `ORDER`, `add_arguments(parser)` and `run(args) -> int`. They are
discovered here, so adding a command never touches this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings
from collections.abc import Sequence

from medbench import __version__, commands
from medbench.errors import MedbenchError, MedbenchWarning

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 2 (argparse's own code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"medbench: error: {message} (see '{self.prog} --help')\n")


def _command_modules() -> list:
    mods = [
        importlib.import_module(f"{commands.__name__}.{m.name}")
        for m in pkgutil.iter_modules(commands.__path__)
    ]
    return sorted((m for m in mods if hasattr(m, "run")), key=lambda m: (m.ORDER, m.NAME))


def build_parser() -> argparse.ArgumentParser:
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
    for mod in _command_modules():
        p = sub.add_parser(
            mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP)
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


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
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
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
        print("medbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
