"""Least privilege after start-up (issue 8.13).

vpnd needs root only to set up: the TUN device, raw ESP/AH sockets, UDP 500/4500, routes
and rules. Once that is done, a vpnd started as root becomes `daemon.user` and keeps only

- CAP_NET_ADMIN        routes, rules, TUN MTU, XFRM-free netlink work (reload, RRI, DPD)
- CAP_NET_RAW          the raw ESP/AH sockets (already open) and new ones on reload
- CAP_NET_BIND_SERVICE UDP 500/4500 sockets opened again on reload

in its effective and permitted sets, none inheritable or ambient, a bounding set of those
three, and no_new_privs (execve can never regain anything). That is what strongSwan's
charon does with `--with-user`/`charon.user` and what systemd's `User=` plus
`AmbientCapabilities=` gives a service that starts unprivileged; both end the same way here.

Linux interfaces: prctl(2) PR_SET_KEEPCAPS / PR_CAPBSET_DROP / PR_SET_NO_NEW_PRIVS /
PR_CAP_AMBIENT, capset(2) with _LINUX_CAPABILITY_VERSION_3, setresuid(2)/setresgid(2).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import os
import pwd
from dataclasses import dataclass

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
KEPT = (CAP_NET_ADMIN, CAP_NET_RAW, CAP_NET_BIND_SERVICE)
CAP_NAMES = {CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE", CAP_NET_ADMIN: "CAP_NET_ADMIN",
             CAP_NET_RAW: "CAP_NET_RAW"}

PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

DEFAULT_USER = "vpnd"  # used when it exists and daemon.user is not set


class PrivilegeError(Exception):
    """Dropping privileges failed; the message is one line."""


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    if _lib().prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                    ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        e = ctypes.get_errno()
        raise PrivilegeError(f"prctl({option}): {os.strerror(e)}")


def _mask(caps) -> tuple[int, int]:
    m = 0
    for c in caps:
        m |= 1 << c
    return m & 0xFFFFFFFF, m >> 32


def _capset(caps) -> None:
    """effective = permitted = caps, inheritable = none."""
    lo, hi = _mask(caps)
    hdr = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)(_Data(lo, lo, 0), _Data(hi, hi, 0))
    if _lib().capset(ctypes.byref(hdr), data) != 0:
        raise PrivilegeError(f"capset: {os.strerror(ctypes.get_errno())}")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


@dataclass(frozen=True)
class Target:
    name: str
    uid: int
    gid: int


def resolve(user: str | None) -> Target | None:
    """The account to become: `user`, else DEFAULT_USER if it exists; None = stay root.
    KeyError for a named user that does not exist."""
    if user is None:
        try:
            pw = pwd.getpwnam(DEFAULT_USER)
        except KeyError:
            return None
    elif user == "root":
        return None
    else:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    return Target(pw.pw_name, pw.pw_uid, pw.pw_gid)


def target_gid(user: str | None) -> int | None:
    """The group vpnd will run as (for the config's "readable by others" warnings)."""
    if os.geteuid() != 0:
        return os.getegid()
    try:
        t = resolve(user)
    except (KeyError, ValueError):
        return None
    return t.gid if t else 0


# Imported inside functions somewhere in vpnd: load them while still root, so that a Python
# installed where the daemon's user cannot read (e.g. under /root) still finds them later.
_LAZY_MODULES = (
    "grp", "pwd", "hashlib", "hmac", "difflib", "json", "importlib.metadata",
    "concurrent.futures.thread", "encodings.idna",
    "cryptography.x509", "cryptography.x509.oid", "cryptography.exceptions",
    "cryptography.hazmat.primitives.hashes", "cryptography.hazmat.primitives.serialization",
    "cryptography.hazmat.primitives.asymmetric.rsa", "cryptography.hazmat.primitives.asymmetric.ec",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "cryptography.hazmat.primitives.asymmetric.padding",
    "cryptography.hazmat.primitives.asymmetric.dh",
)


def preload() -> list[str]:
    """Import every vpnd module and the modules vpnd imports lazily; the names that failed."""
    import importlib
    import pkgutil

    import vpnd
    failed = []
    names = [m.name for m in pkgutil.walk_packages(vpnd.__path__, "vpnd.")
             if not m.name.endswith("__main__")]
    for name in (*names, *_LAZY_MODULES):
        try:
            importlib.import_module(name)
        except Exception:  # an optional module (e.g. without its library): not fatal
            failed.append(name)
    return failed


def drop(target: Target | None) -> str:
    """Become `target` keeping KEPT; started unprivileged, only narrow the capability sets.
    Returns what was done, for the log. Raises PrivilegeError (the caller stops: running
    with more privilege than configured is not an option)."""
    if os.geteuid() != 0:
        # systemd User= + AmbientCapabilities=: trim to KEPT, clear ambient ones
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        _capset(_current_effective() & set(KEPT))
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        return f"running as uid {os.geteuid()} with {caps_text()}"
    if target is None:
        return "running as root"
    try:
        # the bounding set first: dropping from it needs CAP_SETPCAP, which goes next
        for cap in range(_last_cap() + 1):
            if cap not in KEPT:
                try:
                    _prctl(PR_CAPBSET_DROP, cap)
                except PrivilegeError:
                    pass  # a capability the kernel does not know
        _prctl(PR_SET_KEEPCAPS, 1)  # keep the permitted set across setuid
        os.setgroups([])
        os.setresgid(target.gid, target.gid, target.gid)
        os.setresuid(target.uid, target.uid, target.uid)
        _prctl(PR_SET_KEEPCAPS, 0)
        _capset(KEPT)  # setuid cleared the effective set; permitted still holds these
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
    except OSError as e:
        raise PrivilegeError(f"cannot become user {target.name}: {e.strerror or e}") from None
    if os.geteuid() == 0 or os.getuid() == 0:
        raise PrivilegeError(f"still uid 0 after switching to {target.name}")
    return f"running as user {target.name} (uid {target.uid}) with {caps_text()}"


def _current_effective() -> set[int]:
    return _status_caps("CapEff")


def _status_caps(field: str) -> set[int]:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                v = int(line.split()[1], 16)
                return {i for i in range(64) if v >> i & 1}
    return set()


def caps_text() -> str:
    eff = _current_effective()
    return " ".join(CAP_NAMES.get(c, f"cap{c}") for c in sorted(eff)) or "no capabilities"


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
