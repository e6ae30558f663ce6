"""File names from the outside world made safe to store and print.

Names arrive as ``str`` with surrogate escapes (``os.listdir``/``pathlib`` on Linux, tar members
for bytes that are not UTF-8) or as raw bytes. PostgreSQL, templates and terminals need valid
Unicode: undecodable bytes become U+FFFD, never an exception.
"""

from __future__ import annotations

import os

REPLACEMENT = "\ufffd"


def safe_text(value: str | bytes | os.PathLike) -> str:
    """``value`` as valid Unicode: bytes decoded as UTF-8, anything undecodable (including
    surrogate escapes and lone surrogates) replaced by U+FFFD; NUL dropped (PostgreSQL refuses it)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        try:
            value.encode("utf-8")
            text = value
        except UnicodeEncodeError:
            # Escaped bytes back to bytes, so a valid UTF-8 run split by escapes stays whole;
            # any other lone surrogate is encoded as itself and then replaced.
            text = value.encode("utf-8", "surrogateescape" if _only_escapes(value) else "surrogatepass").decode(
                "utf-8", "replace")
    return text.replace("\x00", "")


def _only_escapes(value: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in value)
