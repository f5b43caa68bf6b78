"""systemd readiness notification (sd_notify(3)) without libsystemd.

One AF_UNIX datagram per state change to $NOTIFY_SOCKET; a name starting with "@" is an
abstract socket (leading NUL byte). Without the variable (not run by systemd) it does nothing.
"""

from __future__ import annotations

import os
import socket


def sd_notify(state: str) -> bool:
    """Send e.g. "READY=1"; True when a notification socket took it."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(path)
            s.sendall(state.encode())
        return True
    except OSError:
        return False


def ready(status: str = "") -> bool:
    return sd_notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def reloading() -> bool:
    return sd_notify("RELOADING=1")


def stopping() -> bool:
    return sd_notify("STOPPING=1")
