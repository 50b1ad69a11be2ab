"""Shared by the command-line tools: one-line errors, exit codes, warning format, argument parser.

- :class:`~apparate_trt.errors.ApparateError` -> ``error: <message>`` on stderr, exit status 2,
  no traceback;
- Ctrl-C -> ``interrupted`` on stderr, exit status 130;
- bad command-line arguments -> ``error: <message> (see <prog> --help)``, exit status 2;
- Python warnings -> ``warning: <message>`` on stderr.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from typing import NoReturn

from apparate_trt.errors import ApparateError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def one_line(message: object) -> str:
    """The message on a single line (newlines joined with '; ')."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings API
    return f"warning: {one_line(message)}\n"


def run_main(fn: Callable[[], int | None]) -> int:
    """Run a command's body; map user errors and Ctrl-C to messages and exit statuses.

    Returns the exit status (0 on success) for ``sys.exit``.
    """
    warnings.formatwarning = _format_warning
    try:
        status = fn()
    except ApparateError as exc:
        sys.stdout.flush()
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(status or 0)


class Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line: ``error: ... (see PROG --help)``."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults (except None/False, and where the help states its own) and keeps the
    description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False) or "(default" in text:
            return text
        return super()._get_help_string(action)


def flush_print(line: str) -> None:
    """Progress output that shows up at once even when stdout is a pipe."""
    print(line, flush=True)
