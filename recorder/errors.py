"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations


class RecorderError(Exception):
    """Bad input or an unusable environment: unknown exchange or symbol, unreachable endpoint ..."""
