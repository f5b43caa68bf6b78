"""How vpnd's log lines look: subsystems, levels, the SA context of a line, and the three
output forms (a terminal, journald, JSON lines).

Every logger of vpnd is `vpnd.<subsystem>[.<module>]`; `daemon.log_level` sets one level for
all of them (`debug`) or one per subsystem (`{default: info, ike: debug}`). Other libraries'
loggers (pyroute2's netlink dumps, asyncio) log warnings and errors only, whatever the
level: `debug` is vpnd's own.

A line about a connection or an SA names it as strongSwan does, `site-b[3]` for IKE SA 3 and
`site-b{7}` for CHILD_SA 7 (the ids `vpnctl status` shows): callers pass
`extra=ctx(conn, ike_id, child_id)`. Peer-supplied text is escaped before it gets here
(textsafe.safe); the formatters keep every record on one line all the same.

Under systemd (JOURNAL_STREAM names our stderr, systemd.exec(5)) a line carries no time or
PID of its own (journald adds both) and starts with the `<N>` syslog priority that
sd-daemon(3) describes, so `journalctl -p warning` works.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from vpnd.textsafe import one_line

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}

# subsystem -> what it logs (README "Logging"; conf/vpnd.yaml)
SUBSYSTEMS = {
    "daemon": "start, stop, reload, TUN device, privileges, watchdog",
    "ike": "IKE messages in and out, IKE/CHILD_SA state changes and why",
    "esp": "the data plane: SAs installed and deleted, lifetimes, unknown SPIs",
    "net": "IKE packets sent and received, sockets, routes",
    "control": "control socket, vpnctl commands, monitor, metrics, key export",
    "updown": "updown scripts and their output",
}
FORMATS = ("text", "json")

# syslog priorities (sd-daemon(3): "<N>" at the start of a line)
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


def logger(subsystem: str, module: str | None = None) -> logging.Logger:
    """The logger of a subsystem (SUBSYSTEMS), optionally of one module inside it."""
    return logging.getLogger(f"vpnd.{subsystem}" + (f".{module}" if module else ""))


def ctx(conn: str | None = None, ike: int | None = None, child: int | None = None) -> dict:
    """`extra=` of a log call: the connection and the IKE SA / CHILD_SA ids it is about."""
    return {"conn": conn, "ike_sa": ike, "child_sa": child}


def context(record: logging.LogRecord) -> str:
    """`site-b[3]`, `site-b{7}`, `site-b[3] site-b{7}`, `site-b`, or "" for a record."""
    conn = getattr(record, "conn", None)
    ike = getattr(record, "ike_sa", None)
    child = getattr(record, "child_sa", None)
    if conn is None and ike is None and child is None:
        return ""
    name = conn or ""
    parts = []
    if ike is not None:
        parts.append(f"{name}[{ike}]")
    if child is not None:
        parts.append(f"{name}{{{child}}}")
    return " ".join(parts) if parts else name


def subsystem(record: logging.LogRecord) -> str:
    parts = record.name.split(".")
    if parts[0] == "vpnd" and len(parts) > 1 and parts[1] in SUBSYSTEMS:
        return parts[1]
    return "daemon" if parts[0] == "vpnd" else parts[0]


def journal_stream(stream=None) -> bool:
    """True when `stream` (stderr) is connected to journald: JOURNAL_STREAM holds the
    device and inode of the journal's socket, and they match the stream's (systemd.exec(5);
    a child that inherited the variable but writes elsewhere does not match)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class TextFormatter(logging.Formatter):
    """`2026-12-02T18:07:07 vpnd[123] INFO [ike] site-b[3]: message`; under journald
    `<6>[ike] site-b[3]: message`. The message is one line (textsafe.one_line); a traceback
    follows on lines of its own, under journald each with the record's priority."""

    def __init__(self, journal: bool = False):
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = one_line(record.getMessage())
        where = context(record)
        body = f"[{subsystem(record)}] " + (f"{where}: " if where else "") + message
        if self.journal:
            prio = f"<{_PRIORITY.get(record.levelno, 6)}>"
            line = prio + body
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            line = f"{stamp} vpnd[{record.process}] {record.levelname} {body}"
        extra = self._trace(record)
        if extra:
            if self.journal:
                extra = "\n".join(prio + t for t in extra.splitlines())
            line += "\n" + extra
        return line

    def _trace(self, record: logging.LogRecord) -> str:
        out = ""
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
            out = record.exc_text
        if record.stack_info:
            out = (out + "\n" if out else "") + self.formatStack(record.stack_info)
        return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601 with milliseconds), level,
    subsystem, connection, ike_sa, child_sa, message (and `exception` with a traceback).
    Under journald the line starts with the `<N>` priority, which journald strips."""

    def __init__(self, journal: bool = False):
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        obj = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "subsystem": subsystem(record),
            "connection": getattr(record, "conn", None),
            "ike_sa": getattr(record, "ike_sa", None),
            "child_sa": getattr(record, "child_sa", None),
            "message": one_line(record.getMessage()),
        }
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        line = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), default=str)
        return f"<{_PRIORITY.get(record.levelno, 6)}>{line}" if self.journal else line


def level_of(name) -> int:
    return LEVELS.get(str(name).lower(), logging.INFO)


def apply_levels(default: str = "info", per_subsystem=()) -> None:
    """Set vpnd's levels: `default` for every subsystem not in `per_subsystem` (pairs of
    subsystem, level). Other libraries stay at warning (or the default if that is higher)."""
    base = level_of(default)
    logging.getLogger("vpnd").setLevel(base)
    given = dict(per_subsystem)
    for sub in SUBSYSTEMS:
        logging.getLogger(f"vpnd.{sub}").setLevel(level_of(given[sub]) if sub in given else logging.NOTSET)
    logging.getLogger().setLevel(max(logging.WARNING, base))
    # pyroute2 logs below the root's handlers' level through its own loggers' levels
    logging.getLogger("pyroute2").setLevel(max(logging.WARNING, base))


def setup(default: str = "info", per_subsystem=(), fmt: str = "text", stream=None) -> None:
    """Install the one handler (stderr) with the formatter for `fmt` and the environment."""
    stream = stream or sys.stderr
    journal = journal_stream(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(journal) if fmt == "json" else TextFormatter(journal))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    apply_levels(default, per_subsystem)


def setup_from(daemon_config) -> None:
    setup(daemon_config.log_level, getattr(daemon_config, "log_subsystems", ()),
          getattr(daemon_config, "log_format", "text"))


def reformat(fmt: str) -> None:
    """Reload: switch the format of the installed handler(s) in place."""
    for h in logging.getLogger().handlers:
        if isinstance(h.formatter, (TextFormatter, JsonFormatter)):
            h.setFormatter(JsonFormatter(h.formatter.journal) if fmt == "json"
                           else TextFormatter(h.formatter.journal))


def enabled(subsystem_name: str, level: int = logging.DEBUG) -> bool:
    return logging.getLogger(f"vpnd.{subsystem_name}").isEnabledFor(level)


def wants_trace() -> bool:
    """Should the IKE cores make their per-message lines (vpnd/ike/trace.py)?"""
    return enabled("ike") or enabled("net")


__all__ = ["LEVELS", "SUBSYSTEMS", "FORMATS", "logger", "ctx", "context", "subsystem",
           "journal_stream", "TextFormatter", "JsonFormatter", "apply_levels", "setup",
           "setup_from", "reformat", "enabled", "wants_trace", "level_of"]
