"""The one error type a user can act on.

A job that meets a ``UserError`` (a bad option, an input that is not there, a checkpoint that does not fit the
data) prints it as one line, ``<job>: error: <message>``, and exits 2; any other exception is a crash: exit 1
with its traceback (jobs/_wiring.py). Library modules raise their own subclasses (``StorageError``,
``CheckpointError``, ...), so callers can still tell them apart.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: reported in one line, exit code 2."""


class ConfigError(UserError, ValueError):
    """A bad option value (or a combination of options that cannot work)."""


class FeatureMismatch(UserError, ValueError):
    """The utterances' audio features are not the model's (feature set or dimension differs)."""
