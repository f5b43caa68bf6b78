"""Unix socket paths the daemon listens on (control socket, metrics): only a stale socket of
a daemon that died is ours to remove (issue 8.7); a regular file, link or directory at that
path is the operator's and is never deleted."""

from __future__ import annotations

import os
import socket
import stat


def answers(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def clear_stale(path: str, setting: str) -> None:
    """Remove a stale socket at `path`; OSError (one line, naming `setting`) when something
    else is there or a live daemon answers on it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket; refusing to remove it (fix {setting})")
    if answers(path):
        raise OSError(f"another daemon answers on {path}")
    os.unlink(path)
