"""The one base of run-ending errors a user can act on.

Bad data, a tracker that cannot start, too many non-finite steps, a resume path, a dead policy / critic rank, the
watchdog: each is a subclass of :class:`RunError` defined where it is raised. The command line (``raylhf.cli``)
prints such an error as one line and exits 2, without importing the modules that raise them. Layer: core (no
project imports), see docs/architecture.md.
"""

from __future__ import annotations


class RunError(Exception):
    """Mixed into a run-ending error class whose message says what to change."""

    def cli_message(self) -> str:
        """The line the command line prints (the message by default)."""
        return str(self)
