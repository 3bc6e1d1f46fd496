"""Command-line plumbing of the ``data/`` tools: one-line argparse errors and ``DataError`` -> exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from mopd.errors import DataError


# ---------------------------------------------------------------------------------------------------
# CLI plumbing


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_cli(main: Callable[[], Any]) -> None:
    """Run ``main``; a DataError becomes one line on stderr and its exit status (2 for bad input)."""
    try:
        main()
    except DataError as exc:
        print(f"{os.path.basename(sys.argv[0])}: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
