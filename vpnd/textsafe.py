"""Peer-supplied text made safe for logs, status and error messages.

Anything a peer sends (IDs, certificate DNs, vendor IDs, notification data, ...) can hold
newlines, terminal escapes, bidi overrides or invalid UTF-8. Put into a log line raw, a
newline forges a second log record and an ESC sequence rewrites the operator's terminal.
`safe()` turns any such value into one bounded, printable line; `SafeFormatter` is the log
formatter's second line of defence for a message that did not go through `safe()`.
"""
from __future__ import annotations

import logging

DEFAULT_LIMIT = 256
ELLIPSIS = "\u2026"


def _escape_char(ch: str) -> str:
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x100:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def _pieces(text: str, escape_backslash: bool):
    for ch in text:
        if ch == "\\" and escape_backslash:
            yield "\\\\"
        elif ch.isprintable():  # False for Cc, Cf (bidi overrides), Zl, Zp, Cs, Cn ...
            yield ch
        else:
            yield _escape_char(ch)


def safe(value, limit: int = DEFAULT_LIMIT) -> str:
    """`value` (str, bytes or anything with a str()) as one printable line of at most
    `limit` characters: control and other non-printable characters and bytes that are not
    UTF-8 become \\xNN (\\uNNNN beyond Latin-1), a backslash becomes \\\\ (so the result
    is unambiguous), and a longer result is cut at an escape boundary and ends with an
    ellipsis."""
    if value is None:
        return "None"
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).decode("utf-8", "surrogateescape")
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = str(value)
        except Exception:  # a hostile __str__ must not break the caller's log line
            text = f"<{type(value).__name__}>"
    limit = max(int(limit), len(ELLIPSIS) + 1)
    out: list[str] = []
    size = 0
    for piece in _pieces(text, True):
        out.append(piece)
        size += len(piece)
        if size > limit:  # too long: keep whole escapes that fit before the ellipsis
            budget = limit - len(ELLIPSIS)
            while size > budget:
                size -= len(out.pop())
            return "".join(out) + ELLIPSIS
    return "".join(out)


def one_line(text: str) -> str:
    """`text` with its control/non-printable characters escaped, not bounded and with
    backslashes left alone: for whole log messages that are our own text."""
    if text.isprintable():
        return text
    return "".join(_pieces(text, False))


class SafeFormatter(logging.Formatter):
    """A logging.Formatter whose message part is always one line (peer data that reached
    a log call without `safe()` cannot forge a record); a traceback appended after it is
    our own text and is left as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


__all__ = ["safe", "one_line", "SafeFormatter", "DEFAULT_LIMIT", "ELLIPSIS"]
