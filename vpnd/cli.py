"""Command lines: `vpnd` (the daemon, or --check of a config) and `vpnctl` (control client).

vpnctl exit codes: 0 done; 1 the daemon refused or the command failed (reason on stderr);
2 usage error; 3 the daemon could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from vpnd.defaults import DEFAULT_CONFIG, DEFAULT_SOCKET, default_socket  # noqa: F401 (re-exported)


# -- vpnd ------------------------------------------------------------------------------------

def vpnd_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpnd", description="Site-to-site IPsec VPN daemon")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, metavar="FILE",
                   help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("--check", action="store_true",
                   help="validate the configuration and exit: 0 valid, 1 with one line per problem")
    from vpnd import opscli
    opscli.add_version(p)
    return p


def load_or_report(path: str):
    """The Config, or None after printing one line per problem to stderr."""
    try:
        from vpnd.config import ConfigError, load_config
    except ImportError as e:
        print(f"vpnd: configuration support missing: {e}", file=sys.stderr)
        return None
    try:
        return load_config(path)
    except ConfigError as e:
        problems = list(getattr(e, "problems", None) or [str(e)])
        for line in problems:
            print(line, file=sys.stderr)
        return None
    except FileNotFoundError:
        print(f"{path}: no such file", file=sys.stderr)
        return None
    except PermissionError:
        print(f"{path}: permission denied", file=sys.stderr)
        return None
    except OSError as e:
        print(f"{path}: {e.strerror or e}", file=sys.stderr)
        return None
    except Exception as e:  # a checker bug: still one line, and no value quoted (secrets)
        print(f"{path}: internal error while checking the config ({type(e).__name__})",
              file=sys.stderr)
        return None


def vpnd_main(argv: list[str] | None = None) -> int:
    args = vpnd_parser().parse_args(argv)
    config = load_or_report(args.config)
    if config is None:
        return 1
    if args.check:
        for w in getattr(config, "warnings", ()):
            print(f"warning: {w}", file=sys.stderr)
        return 0
    from vpnd.daemon import run_daemon
    return run_daemon(config, args.config)


# -- vpnctl ----------------------------------------------------------------------------------

def vpnctl_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpnctl", description="Control a running vpnd")
    p.add_argument("--socket", "-s", metavar="PATH",
                   help="control socket (default: $VPND_SOCKET, else daemon.control_socket of "
                        f"{DEFAULT_CONFIG}, else {DEFAULT_SOCKET})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    st = sub.add_parser("status", help="show connections, IKE SAs and IPsec SAs")
    st.add_argument("--json", action="store_true", help="print the status object as JSON")
    for name, text in (("up", "initiate a connection; returns once its CHILD_SA is installed"),
                       ("down", "tear a connection down; returns once its CHILD_SA is deleted"),
                       ("rekey", "rekey a connection's CHILD_SA (or with --ike its IKE SA) now")):
        c = sub.add_parser(name, help=text)
        c.add_argument("name", metavar="NAME", nargs="?" if name == "down" else None)
        if name == "down":  # `clear crypto sa peer ADDR` / `clear crypto sa` (vpnd/conns.py)
            c.add_argument("--peer", metavar="ADDR", help="every connection with an SA to ADDR")
            c.add_argument("--all", action="store_true", help="every connection with an SA")
        c.add_argument("--timeout", type=float, default=30.0, metavar="SEC",
                       help="how long to wait for the SA (default 30)")
        if name == "rekey":
            c.add_argument("--ike", action="store_true", help="rekey the IKE SA instead")
    sub.add_parser("reload", help="reload the configuration (same as SIGHUP)")
    from vpnd import opscli  # --version and the commands that need no daemon (pki, import-ios, ...)
    opscli.add_version(p)
    opscli.register(sub)
    # `vpnctl status --socket X` works as well as `vpnctl --socket X status`
    for c in sub.choices.values():
        c.add_argument("--socket", "-s", metavar="PATH", default=argparse.SUPPRESS,
                       help="control socket (as before the command)")
    return p


def build_request(args) -> dict:
    req = {"command": args.command}
    if args.command in ("up", "down", "rekey"):
        req["name"] = args.name
        req["timeout"] = args.timeout
    if args.command == "down" and (args.peer or args.all):
        del req["name"]
        req.update({"peer": args.peer} if args.peer else {"all": True})
    if args.command == "rekey":
        req["ike"] = bool(args.ike)
    return req


def vpnctl_main(argv: list[str] | None = None) -> int:
    from vpnd.control import vpnctl_request
    parser = vpnctl_parser()
    args = parser.parse_args(argv)
    from vpnd import opscli
    local_rc = opscli.run_local(args, parser)
    if local_rc is not None:
        return local_rc
    if args.command in ("up", "down", "rekey") and not 0 < args.timeout <= 600:
        print("vpnctl: --timeout must be in (0, 600] seconds", file=sys.stderr)
        return 2
    if args.command == "down" and (args.name is not None) + bool(args.peer) + bool(args.all) != 1:
        print("vpnctl: down takes NAME, --peer ADDR or --all", file=sys.stderr)
        return 2
    req = build_request(args)
    code, result = vpnctl_request(args, req, timeout=req.get("timeout", 30.0) + 10.0)
    if code:
        return code
    if args.command == "status":
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            from vpnd.status import format_status
            sys.stdout.write(format_status(result or {}))
    elif args.command == "down" and "down" in (result or {}):
        for r in result["down"]:
            print(f"{r.get('connection')}: {r.get('state')}" + (f" ({r['error']})" if r.get("error") else ""))
    elif args.command in ("up", "down"):
        print(f"{args.name}: {(result or {}).get('state', args.command)}")
    elif args.command == "rekey":
        print(f"{args.name}: {'IKE SA' if args.ike else 'CHILD_SA'} rekeyed")
    else:
        print("reloaded")
    return 0


if __name__ == "__main__":  # python -m vpnd.cli (vpnd)
    sys.exit(vpnd_main())
