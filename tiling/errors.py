"""Errors that reach the user as one line.

Every problem the user can fix (bad input, bad option, unwritable output) is raised as a ``TilewiseError``
subclass whose message names the problem; the CLI prints it on one line. Anything else is a bug.
"""

from __future__ import annotations


class TilewiseError(Exception):
    """A problem with the user's input, options or environment; the message is shown as is."""


class InputError(TilewiseError):
    """The input raster is missing, unreadable, corrupt or unsuitable."""


class OptionError(TilewiseError):
    """An option or config value is invalid (the CLI exits with status 2 for these)."""


class OutputError(TilewiseError):
    """The output cannot be written where asked."""


class CheckpointError(TilewiseError):
    """The model checkpoint is missing, corrupt or not a tilewise checkpoint."""
