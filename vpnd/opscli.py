"""The operator's vpnctl commands that need no running daemon (pki, import-ios, completion)
and the --version text of both programs. cli.py registers them with one call each."""

from __future__ import annotations

import argparse
import sys

from vpnd.about import version  # noqa: F401 (re-exported: --version of both programs)


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version",
                        version=f"{parser.prog} {version()}")


# Commands run in vpnctl itself; every other command goes to the daemon's socket.
LOCAL_COMMANDS: dict[str, object] = {}


def register(sub) -> None:
    """Adds the local commands to vpnctl's subparsers."""
    from vpnd import completion
    c = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    c.add_argument("shell", choices=("bash", "zsh"))
    LOCAL_COMMANDS["completion"] = completion.main
    try:
        from vpnd import pki
    except ImportError:
        pki = None
    if pki is not None:
        pki.register(sub)
        LOCAL_COMMANDS["pki"] = pki.main
    from vpnd import monitor
    monitor.register(sub)
    LOCAL_COMMANDS["monitor"] = monitor.main  # a stream over the socket, not one answer
    from vpnd import conns
    conns.register(sub)
    LOCAL_COMMANDS["conns"] = conns.main
    from vpnd import keyexport
    keyexport.register(sub)
    LOCAL_COMMANDS["keys"] = keyexport.main  # asks the daemon itself, then writes the files
    try:
        from vpnd import import_ios
    except ImportError:
        import_ios = None
    if import_ios is not None:
        import_ios.register(sub)
        LOCAL_COMMANDS["import-ios"] = import_ios.main


def run_local(args, parser: argparse.ArgumentParser) -> int | None:
    """The exit code of a local command, or None when the command is for the daemon."""
    fn = LOCAL_COMMANDS.get(args.command)
    if fn is None:
        return None
    return fn(args, parser)
