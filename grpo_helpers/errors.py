"""Mistakes a learner makes read as one line in a notebook, not as a traceback from deep inside a library.

A `UsageError` is raised for a value the user chose (a parameter, a path, a run folder); its message names the
value and what is allowed, which is all the reader needs. In a Jupyter kernel (JupyterLab, papermill) such errors
are shown as that one line plus a hint; every other error keeps its full traceback, and `%tb` still prints the
full one of a usage error. The cell still fails, so papermill stops on it as before.
"""

from __future__ import annotations

import sys


class UsageError(Exception):
    """Mixin for errors caused by a value the user chose; the message says what to change."""


class MissingFileError(UsageError, FileNotFoundError):
    """A file or folder the user named does not exist, or lacks what it should hold."""


def _one_line(shell, etype, value, tb, tb_offset=None) -> list[str]:
    sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb  # what %tb prints
    origin = tb
    while origin.tb_next is not None:
        origin = origin.tb_next
    where = origin.tb_frame.f_code.co_filename.rsplit("/", 2)[-2:]
    stb = [f"\x1b[0;31m{etype.__name__}\x1b[0m: {value}",
           f"(raised in {'/'.join(where)}; run %tb for the full traceback)"]
    shell._showtraceback(etype, value, stb)  # published as the cell's error output, as a traceback would be
    return []


def show_usage_errors_briefly() -> bool:
    """In a Jupyter kernel, show UsageErrors as one line; elsewhere (scripts, pytest) do nothing. True if set.
    A handler the user installed already is left alone."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return False
    if shell.custom_exceptions not in ((), (UsageError,)):
        return False
    shell.set_custom_exc((UsageError,), _one_line)
    return True
