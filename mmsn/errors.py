"""Errors a user can act on: each names the file, row or key at fault."""

from __future__ import annotations


class MMSNError(Exception):
    """Base class for user-facing errors: the CLI prints the message and exits non-zero."""


class DataError(MMSNError, ValueError):
    """Bad input data: a missing column, an unreadable image, an empty split, ..."""


class ConfigError(MMSNError, ValueError):
    """Bad configuration: an unknown key, an out-of-range value, an unknown name."""


def unknown_name(kind: str, name: str, known: object) -> str:
    """Message for an unknown registry name that lists the valid ones."""
    valid = ", ".join(sorted(str(k) for k in known))  # type: ignore[attr-defined]
    return f"unknown {kind} {name!r}; valid: {valid}"
