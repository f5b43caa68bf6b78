"""Where vpnd and vpnctl look by default: the config file and the control socket. A leaf
module, so the vpnctl commands in other modules (monitor, keys) find the socket without
importing cli.py (which imports them)."""

from __future__ import annotations

import os

DEFAULT_CONFIG = "/etc/vpnd/vpnd.yaml"
DEFAULT_SOCKET = "/run/vpnd/vpnd.sock"


def default_socket(config_path: str = DEFAULT_CONFIG) -> str:
    """VPND_SOCKET, else daemon.control_socket of the default config, else /run/vpnd/vpnd.sock."""
    env = os.environ.get("VPND_SOCKET")
    if env:
        return env
    try:
        # the config loader's bounded read and alias check (issue 8.8): vpnctl reads the
        # default config too, and must not be stalled by a huge file or an alias bomb
        from vpnd.config import MAX_CONFIG_BYTES, _load_yaml, read_file
        doc = _load_yaml(read_file(config_path, MAX_CONFIG_BYTES).decode("utf-8"), config_path)
        sock = ((doc or {}).get("daemon") or {}).get("control_socket")
        if isinstance(sock, str) and sock:
            return sock
    except Exception:
        pass  # unreadable or invalid default config: fall back to the built-in default
    return DEFAULT_SOCKET
