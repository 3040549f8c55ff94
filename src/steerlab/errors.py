"""The one exception type users see: a clear message naming the file, field or flag at fault."""

from __future__ import annotations


class SteerlabError(Exception):
    """Bad input or an unusable resource. The CLI prints the message alone (no traceback)."""
