"""The YAML configuration, checked as a whole and turned into frozen, typed objects.

`load_config(path)` / `parse_config(data)` return a `Config` or raise `ConfigError`, whose
`.problems` lists EVERY problem found, one line each, prefixed by the key path
(`connections.site-b.esp: unknown algorithm 'aes999'`). Field names are the YAML keys of
the contract (../shared/design/contract.md); conf/vpnd.yaml documents every key.

Secrets (PSKs, manual keys) are `Secret` objects whose repr/str print `***`; no error
message ever quotes a secret value.

This module: YAML loading (bounded) and the semantic checks (`_Parser`). The types,
defaults and generic key checks are in vpnd/configschema.py, re-exported here.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from vpnd import logfmt
from vpnd import proposals as _vocab
from vpnd.configschema import *  # noqa: F401,F403  (the types are part of this module's API)
from vpnd.configschema import (  # noqa: F401
    _NAME, ANY_IDENTITY, DEFAULT_ESP, DEFAULT_IKE_V1, DEFAULT_IKE_V2, MAX_CONFIG_BYTES,
    MAX_FILE_BYTES, MAX_PSK_FILE_BYTES, MAX_YAML_NODES, SPI_MAX, SPI_MIN, Auth, Config,
    ConfigError, Connection, DaemonConfig, Dpd, Identity, Lifetime, Manual, ManualAh,
    ManualDirection, ManualEsp, Network, Rri, Secret, Timers, _Bad, _join, _parse_pem_or_der, _Schema,
    _show, _size, _tname, one_line, parse_identity, read_file,
)
from vpnd.proposals import AEAD, Proposal, ProposalError, deprecated_in, parse_proposals


# -- YAML loading -------------------------------------------------------------------------

class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml: fast
    """SafeLoader that reports duplicate keys instead of silently keeping the last one."""


class _PyLoader(yaml.SafeLoader):
    """The same in pure Python, for big files: libyaml composes a whole document without
    releasing the GIL (about a second per 250 KiB on a busy host), which would stall the
    event loop while a reload parses in its worker thread; Python code yields every 5 ms."""


# Up to this size libyaml's time holding the GIL stays in the tens of milliseconds.
C_LOADER_MAX_BYTES = 64 << 10


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        try:
            key = loader.construct_object(key_node, deep=True)
            hash(key)
        except Exception:  # unhashable keys: let the normal constructor report it
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark)
        seen[key] = True
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_PyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(source: str, e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{source}: {where}{what}"


# Files named by the running configuration, read when it was loaded (path -> bytes). The IKE
# cores take credentials from here (credential_file), so that they need no file access after
# start-up (the daemon may run unprivileged by then) and see what --check validated.
_LOADED_FILES: dict[str, bytes] = {}


def credential_file(path: str) -> bytes:
    """A certificate / key / CA file of the loaded configuration, else read now (bounded)."""
    data = _LOADED_FILES.get(path)
    return data if data is not None else read_file(path, MAX_FILE_BYTES)


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes in the document with every alias expanded; stops past `limit`. A billion-laughs
    file is a few hundred bytes whose aliases expand to 10^9 nodes (issue 8.8)."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if key in active:
            raise ValueError("an alias refers to the node that contains it")
        active.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                n += size(child)
                if n > limit:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                n += size(k) + size(v)
                if n > limit:
                    break
        active.discard(key)
        memo[key] = n
        return n

    return size(root)


def _load_yaml(text: str, source: str) -> Any:
    loader = (_Loader if len(text) <= C_LOADER_MAX_BYTES else _PyLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            n = _expanded_size(node, MAX_YAML_NODES)
        except ValueError as e:
            raise ConfigError([f"{source}: recursive YAML alias: {e}"]) from None
        if n > MAX_YAML_NODES:
            raise ConfigError([f"{source}: YAML aliases expand to more than {MAX_YAML_NODES} "
                               "values (an alias bomb?); write the values out or use fewer "
                               "aliases"])
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_config(path: str | os.PathLike) -> Config:
    path = os.fspath(path)
    try:
        raw = read_file(path, MAX_CONFIG_BYTES)
        text = raw.decode("utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: cannot read: not UTF-8 text"]) from None
    except ValueError:  # a NUL byte in the name
        raise ConfigError([f"{path}: not a valid file name"]) from None
    try:
        data = _load_yaml(text, path)
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_error(path, e)]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply"]) from None
    files: dict[str, bytes] = {}
    cfg = parse_config(data, base_dir=os.path.dirname(os.path.abspath(path)), path=path,
                       _files=files)
    global _LOADED_FILES
    _LOADED_FILES = files  # one assignment: a reader in another thread sees old or new
    return cfg


def parse_config(data: Any, *, base_dir: str | None = None, path: str | None = None,
                 _files: dict[str, bytes] | None = None) -> Config:
    """Check `data` (the YAML document) and build a Config; raises ConfigError."""
    p = _Parser(base_dir or os.getcwd())
    try:
        cfg = p.config(data, path)
    except RecursionError:
        p.err("", "nested too deeply")
        cfg = None
    if p.problems:
        raise ConfigError(p.problems)
    assert cfg is not None
    if _files is not None:
        _files.update(p.files)
    return cfg


# -- the semantic checks ---------------------------------------------------------------------

class _Parser(_Schema):
    def config(self, data: Any, path: str | None) -> Config | None:
        if data is None:
            data = {}
        try:
            top = self.mapping(data, "", {"daemon": 1, "connections": 1})
        except _Bad:
            return None
        daemon = self.daemon(top.get("daemon"))
        self.daemon_cfg = daemon
        conns: list[Connection] = []
        raw = top.get("connections")
        if raw is not None and not isinstance(raw, dict):
            self.err("connections", f"expected a mapping of connection names, got {_tname(raw)}")
            raw = {}
        for name, body in (raw or {}).items():
            cpath = _join("connections", str(name))
            if not isinstance(name, str) or not _NAME.match(name):
                self.err(cpath, "connection name must be letters, digits, '.', '_' or '-' "
                               "(at most 64, starting with a letter or digit)")
                continue
            try:
                c = self.connection(name, body, cpath, daemon)
            except _Bad:
                continue
            if c is not None:
                conns.append(c)
        self.cross_checks(conns)
        inline = [c for c in conns if c.manual is not None or
                  (c.auth is not None and c.auth.method == "psk" and c.psk_file is None)]
        if path and inline:
            # psk: / manual keys written in the config itself (issue 8.13, 11)
            what = "manual keys" if inline[0].manual else "a pre-shared key"
            self.exposed_secret(f"connections.{inline[0].name}", os.path.abspath(path),
                                f"holds {what} and ")
        if not raw and not daemon.allow_empty and not self.problems:
            # An empty file (or a lost connections: section) would tear every tunnel down
            # on reload: only an explicit flag makes it a valid configuration (issue 7.13).
            self.err("connections", "no connections configured; to run with none on "
                                    "purpose, write 'connections: {}' and set "
                                    "daemon.allow_empty: true")
        return Config(daemon=daemon, connections=tuple(conns), path=path,
                      warnings=tuple(self.warnings))

    def daemon(self, v: Any) -> DaemonConfig:
        d = DaemonConfig()
        path = "daemon"
        try:
            m = self.mapping(v, path, {f: 1 for f in DaemonConfig.__dataclass_fields__
                                       if f != "log_subsystems"})  # log_level's mapping form
        except _Bad:
            return d

        def tun(v, p):
            s = self.string(v, p)
            # IFNAMSIZ is 16 with the NUL; '/' and blanks are not allowed in names.
            if (len(s.encode()) > 15 or re.search(r"[\s/:]", s) or s in (".", "..")
                    or not s.isprintable()):
                self.fail(p, f"{_show(s)} is not a valid interface name (max 15 characters)")
            return s

        def mtu(v, p):
            if v == "auto" or v is None:
                return None
            # 576: the minimum IPv4 datagram every host accepts (RFC 791); 1280 for IPv6.
            return self.integer(576, 65535)(v, p)

        def mss(v, p):
            if v is False or v is None:
                return None
            if v == "auto":
                return "auto"
            if isinstance(v, bool) or not isinstance(v, int):
                self.fail(p, f"expected auto, false or an integer MSS, got {_tname(v)} {_show(v)}")
            return self.integer(536, 65495)(v, p)

        def user(v, p):
            if isinstance(v, int) and not isinstance(v, bool):
                v = str(v)
            s = self.string(v, p)
            if s != "root":
                import pwd
                try:
                    pwd.getpwuid(int(s)) if s.isdigit() else pwd.getpwnam(s)
                except (KeyError, OverflowError):
                    self.fail(p, f"no such user '{s}' (create it, e.g. useradd --system "
                                 f"--no-create-home --shell /usr/sbin/nologin {s}, or use root)")
            return s

        def group(v, p):
            s = self.string(v, p)
            try:
                import grp
                grp.getgrnam(s)
            except KeyError:
                if not s.isdigit():
                    self.fail(p, f"no such group '{s}'")
            return s

        def socket_path(v, p):
            s = self.string(v, p)
            if not os.path.isabs(s):
                self.fail(p, f"{_show(s)} must be an absolute path")
            if "\0" in s:  # the kernel's sun_path ends at the first NUL
                self.fail(p, f"{_show(s)} is not a valid path")
            if len(s.encode()) > 107:  # sun_path is 108 bytes with the NUL
                self.fail(p, "path too long for a unix socket (max 107 bytes)")
            return s

        def log_level(v, p):
            """`debug` or `{default: info, ike: debug, ...}` (logfmt.SUBSYSTEMS)."""
            level = self.choice(*logfmt.LEVELS)
            if not isinstance(v, dict):
                return level(v, p), ()
            lm = self.mapping(v, p, {"default": None, **logfmt.SUBSYSTEMS})
            default = self.field(lm, "default", p, level, d.log_level)
            subs = tuple((k, self.field(lm, k, p, level, default)) for k in logfmt.SUBSYSTEMS if k in lm)
            return default, subs

        f = self.field
        d = DaemonConfig(
            tun=f(m, "tun", path, tun, d.tun),
            mtu=f(m, "mtu", path, mtu, d.mtu),
            mss_clamp=f(m, "mss_clamp", path, mss, d.mss_clamp),
            control_socket=f(m, "control_socket", path, socket_path, d.control_socket),
            control_group=f(m, "control_group", path, group, d.control_group),
            listen=f(m, "listen", path, self._listen, d.listen),
            ike_port=f(m, "ike_port", path, self.integer(1, 65535), d.ike_port),
            natt_port=f(m, "natt_port", path, self.integer(1, 65535), d.natt_port),
            log_level=(levels := f(m, "log_level", path, log_level, (d.log_level, d.log_subsystems)))[0],
            log_subsystems=levels[1],
            log_format=f(m, "log_format", path, self.choice(*logfmt.FORMATS), d.log_format),
            aggressive_mode=f(m, "aggressive_mode", path, self.boolean, d.aggressive_mode),
            invalid_spi_recovery=f(m, "invalid_spi_recovery", path, self.boolean,
                                   d.invalid_spi_recovery),
            cookie_threshold=f(m, "cookie_threshold", path, self.integer(0), d.cookie_threshold),
            half_open_limit=f(m, "half_open_limit", path, self.integer(1), d.half_open_limit),
            metrics=f(m, "metrics", path, self._metrics_listen, d.metrics),
            allow_key_export=f(m, "allow_key_export", path, self.boolean, d.allow_key_export),
            kill_switch=f(m, "kill_switch", path, self.boolean, d.kill_switch),
            allow_empty=f(m, "allow_empty", path, self.boolean, d.allow_empty),
            user=f(m, "user", path, user, d.user),
            timers=f(m, "timers", path, self.timers, d.timers),
        )
        if "natt_port" in m and d.natt_port == d.ike_port:
            self.err("daemon.natt_port", f"must differ from ike_port ({d.ike_port})")
        return d

    def _listen(self, v, path):
        if v in ("%any", "%any6", "%any4"):  # strongSwan's words for the wildcards
            return {"%any": "%any", "%any4": "0.0.0.0", "%any6": "::"}[v]
        return self.ip(v, path)

    # Bounds of daemon.timers: wide enough for compressed test timers and slow links, tight
    # enough that a typo (ms for s) cannot stall or flood a negotiation.
    _TIMER_BOUNDS = {"retransmit_base": (0.05, 60), "half_open": (1, 3600),
                     "connect_retry": (0.1, 3600), "replaced_grace": (0, 3600),
                     "outbound_settle": (0, 60), "outbound_fallback": (0.1, 600),
                     "inbound_linger": (0, 600), "inbound_only_wait": (1, 3600)}

    def timers(self, v, path) -> Timers:
        d = Timers()
        m = self.mapping(v, path, {k: 1 for k in Timers.__dataclass_fields__})
        vals = {k: self.field(m, k, path, self.seconds(*b), getattr(d, k))
                for k, b in self._TIMER_BOUNDS.items()}
        vals["retransmit_tries"] = self.field(m, "retransmit_tries", path, self.integer(0, 20),
                                              d.retransmit_tries)
        return Timers(**vals)

    def _metrics_listen(self, v, path):
        if v is None or v is False or v == "off":
            return None
        from vpnd.metrics import parse_listen  # the one parser; the server uses it too
        try:
            parse_listen(v)
        except ValueError as e:
            self.fail(path, str(e))
        return v.strip()

    _CONN_KEYS = {f: 1 for f in Connection.__dataclass_fields__ if f != "name"} | {"pfs": 1}

    def connection(self, name: str, body: Any, path: str, daemon: DaemonConfig
                   ) -> Connection | None:
        m = self.mapping(body, path, self._CONN_KEYS)
        f = self.field
        before = len(self.problems)

        version = f(m, "version", path, self._version, 2)
        manual_raw = m.get("manual")
        is_manual = manual_raw is not None
        allow_legacy = f(m, "allow_legacy", path, self.boolean, False)
        local = f(m, "local", path, self.ip, None)
        if "peer" not in m:
            self.err(_join(path, "peer"), "required: the peer's address, or %any to respond only")
        peer = f(m, "peer", path, self._peer, None)
        dynamic = peer == "%any"

        if is_manual:
            for key in ("psk", "psk_file", "auth", "ike", "aggressive", "local_id", "remote_id",
                        "dpd", "pfs", "start", "idle_time", "per_host", "lifetime"):
                if key in m:
                    self.err(_join(path, key), "not used with manual keying (manual:)")
            if dynamic:
                self.err(_join(path, "peer"), "manual keying needs a peer address, not %any")

        if local and peer and peer != "%any" and \
                ipaddress.ip_address(local).version != ipaddress.ip_address(peer).version:
            self.err(_join(path, "local"), f"{local} and peer {peer} are of different IP versions")
        listen = str(daemon.listen)
        for key, addr in (("local", local), ("peer", peer)):
            if addr and addr != "%any" and listen != "%any" and \
                    ipaddress.ip_address(addr).version != ipaddress.ip_address(listen).version:
                self.err(_join(path, key), f"{addr} is IPv{ipaddress.ip_address(addr).version} but "
                         f"daemon.listen {listen} listens on IPv{ipaddress.ip_address(listen).version} "
                         "only (listen: %any for both)")
                break

        aggressive = f(m, "aggressive", path, self.boolean, False)
        if aggressive and version == 2:
            self.err(_join(path, "aggressive"), "Aggressive Mode exists only in IKEv1 (version: 1)")
        if aggressive and not daemon.aggressive_mode:
            self.err(_join(path, "aggressive"),
                     "Aggressive Mode is disabled by daemon.aggressive_mode: false")

        auth = None if is_manual else self._auth(m, path, version)
        psk = auth.psk if auth else None
        psk_file = None
        if "psk_file" in m and isinstance(m["psk_file"], str):
            psk_file = str(Path(self.base_dir) / Path(m["psk_file"]).expanduser())

        local_id = f(m, "local_id", path, self._identity, None)
        remote_id = f(m, "remote_id", path, self._identity, None)
        if remote_id is None and dynamic and not is_manual:
            remote_id = ANY_IDENTITY

        self._policy_lifetime = None
        ike = () if is_manual else f(
            m, "ike", path, self._ike(version, allow_legacy, auth.method if auth else None),
            parse_proposals(DEFAULT_IKE_V1 if version == 1 else DEFAULT_IKE_V2, "ike"))
        esp, ah = self._child(m, path, allow_legacy, is_manual)

        local_ts = f(m, "local_ts", path, self._subnets, ())
        remote_ts = f(m, "remote_ts", path, self._subnets, ())
        mode = f(m, "mode", path, self.choice("tunnel", "transport"), "tunnel")
        start = f(m, "start", path, self.choice("start", "trap", "none"),
                  "none" if dynamic else "trap")
        if dynamic and start != "none" and "start" in m and not is_manual:
            self.err(_join(path, "start"),
                     f"'{start}' needs a peer address; peer %any can only respond (start: none)")
        if mode == "transport" and (local_ts or remote_ts):
            self._transport_ts(path, local, peer, local_ts, remote_ts)

        lifetime = f(m, "lifetime", path, self._lifetime, Lifetime())
        if self._policy_lifetime is not None:
            # Cisco `crypto isakmp policy N` / `lifetime S`: the ISAKMP SA's lifetime
            # (issue 7.4: it was checked, then the 86400 s default was used).
            life, lpath = self._policy_lifetime
            given = m.get("lifetime")
            if isinstance(given, dict) and "ike" in given and given["ike"] != life:
                self.err(_join(path, "lifetime.ike"),
                         f"{_show(given['ike'])} differs from {lpath} ({life}); give it once")
            else:
                lifetime = Lifetime(ike=life, seconds=lifetime.seconds,
                                    kilobytes=lifetime.kilobytes)
        if version == 2 and not is_manual and any(p.ah_integrity for p in esp):
            # RFC 7296 has no SA bundles (one CHILD_SA = one protocol, 3.3.1): a v2 peer
            # would negotiate the ESP half only.
            self.err(_join(path, "ah" if "ah" in m and esp_given_text(m) else "esp"),
                     "IKEv2 has no ESP+AH bundles; use ESP with integrity (e.g. esp-aes 256 "
                     "esp-sha256-hmac, or an AEAD like aes256gcm16), or AH alone (ah: with "
                     "esp: none), or version: 1 / manual keying for the bundle")
        dpd = f(m, "dpd", path, self._dpd, Dpd())
        rri = f(m, "rri", path, self._rri, Rri())

        comp = self._comp(m, path, esp or ah)
        manual = None
        if is_manual:
            manual = self._manual(manual_raw, _join(path, "manual"), esp, ah, comp)
        idle_time = f(m, "idle_time", path, self.integer(0), 0)
        replay_window = f(m, "replay_window", path, self.integer(0, 65536), 64)
        per_host = f(m, "per_host", path, self.boolean, False)
        nat_keepalive = f(m, "nat_keepalive", path, self.integer(0, 3600), 20)
        encap = f(m, "encap", path, self.boolean, False)
        childless = f(m, "childless", path, self.choice("allow", "prefer", "force", "never"), "allow")
        if "childless" in m and (version != 2 or is_manual):
            # RFC 6023 extends IKEv2 only; IKEv1 Main Mode never carries a Quick Mode anyway
            self.err(_join(path, "childless"), "childless IKE SAs (RFC 6023) exist only in IKEv2 "
                     "(version: 2, not manual keying)")
        mobike = f(m, "mobike", path, self.boolean, True)
        if "mobike" in m and (version != 2 or is_manual):
            self.err(_join(path, "mobike"), "MOBIKE (RFC 4555) is an IKEv2 extension: "
                     "not used with IKEv1 or manual keying")
        from vpnd import updown as _updown
        updown = f(m, "updown", path, lambda v, p: _updown.check_script(self, v, p), None)
        updown_timeout = f(m, "updown_timeout", path, lambda v, p: _updown.check_timeout(self, v, p),
                           _updown.DEFAULT_TIMEOUT)
        access_group = f(m, "access_group", path, self._access_group, None)

        if len(self.problems) > before:
            return None
        for key, props in (("ike", ike), ("esp", esp), ("ah", ah)):
            for msg in deprecated_in(props):  # accepted, but say what to use instead (issue 12)
                self.warnings.append(f"{_join(path, key)}: {msg}")
        return Connection(
            name=name, version=version, aggressive=aggressive, local=local, peer=peer,
            psk=psk, psk_file=psk_file, auth=auth, local_id=local_id, remote_id=remote_id,
            ike=ike, esp=esp, ah=ah, local_ts=local_ts, remote_ts=remote_ts, mode=mode,
            start=start if not is_manual else "start", lifetime=lifetime,
            idle_time=idle_time, replay_window=replay_window, per_host=per_host, dpd=dpd,
            nat_keepalive=nat_keepalive, encap=encap, mobike=mobike, rri=rri,
            allow_legacy=allow_legacy, manual=manual, comp=comp,
            updown=updown, updown_timeout=updown_timeout, access_group=access_group,
            childless=childless)

    def _access_group(self, v, path):
        """{in: [entries], out: [entries]} in IOS extended-ACL words (vpnd/acl.py)."""
        from vpnd.acl import AclError, parse_acl
        m = self.mapping(v, path, {"in": 1, "out": 1})
        lists = {}
        for key in ("in", "out"):
            if key not in m or m[key] is None:
                lists[key] = ()
                continue
            try:
                lists[key] = parse_acl(m[key])
            except AclError as e:
                self.err(_join(path, key), str(e))
                lists[key] = ()
        if not lists["in"] and not lists["out"]:
            return None
        return AccessGroup(inbound=lists["in"], outbound=lists["out"])

    def _version(self, v, path):
        if v not in (1, 2) or isinstance(v, bool):
            self.fail(path, f"{_show(v)} is not 1 (IKEv1) or 2 (IKEv2)")
        return v

    def _peer(self, v, path):
        if v == "%any":
            return v
        return self.ip(v, path)

    def _identity(self, v, path):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            self.fail(path, f"expected an identity string, got {_tname(v)} (quote it)")
        s = self.string(v, path)
        try:
            return parse_identity(s)
        except ValueError as e:
            self.fail(path, str(e))

    def _psk(self, v, path) -> Secret:
        if not isinstance(v, str):
            # Never quote the value: it is a secret.
            self.fail(path, f"expected a string, got {_tname(v)} (quote it)")
        return _decode_psk(v, lambda msg: self.fail(path, msg))

    def _auth(self, m: dict, path: str, version: int) -> Auth | None:
        given = [k for k in ("psk", "psk_file", "auth") if k in m]
        if len(given) > 1:
            self.err(path, f"give only one of psk, psk_file, auth (found {', '.join(given)})")
            return None
        if not given:
            self.err(path, "needs authentication: psk, psk_file or auth")
            return None
        key = given[0]
        try:
            if key == "psk":
                return Auth("psk", psk=self._psk(m["psk"], _join(path, "psk")))
            if key == "psk_file":
                p = _join(path, "psk_file")
                fp = self.file_path(m["psk_file"], p, MAX_PSK_FILE_BYTES)
                raw = self.files.pop(fp)  # the key is in the Secret below, not kept twice
                try:
                    text = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    self.fail(p, "the file is not UTF-8 text")
                if not text:
                    self.fail(p, "the file is empty")
                self.exposed_secret(p, fp)
                return Auth("psk", psk=_decode_psk(text, lambda msg: self.fail(p, msg)))
            return self._auth_block(m["auth"], _join(path, "auth"), version)
        except _Bad:
            return None

    def _auth_block(self, v, path, version) -> Auth:
        m = self.mapping(v, path, {"cert": 1, "key": 1, "ca": 1, "rsa_encr": 1, "psk": 1})
        if not m:
            self.fail(path, "empty: give cert, key and ca (or rsa_encr for IKEv1)")
        if "psk" in m:
            if len(m) > 1:
                self.fail(path, "psk cannot be combined with cert, key, ca or rsa_encr")
            return Auth("psk", psk=self._psk(m["psk"], _join(path, "psk")))
        f = self.field
        before = len(self.problems)
        cert = f(m, "cert", path, self._cert_file, None)
        key = f(m, "key", path, self._key_file, None)
        ca = f(m, "ca", path, self._ca_files, ())
        if "rsa_encr" in m:
            rp = _join(path, "rsa_encr")
            if version != 1:
                self.fail(rp, "RSA-encrypted nonces exist only in IKEv1 (version: 1)")
            rm = self.mapping(m["rsa_encr"], rp, {"key": 1, "peer_pubkey": 1})
            for k in ("key", "peer_pubkey"):
                if k not in rm:
                    self.err(_join(rp, k), "required")
            rkey = f(rm, "key", rp, self._key_file, None)
            if key and rkey and key != rkey:
                self.err(_join(rp, "key"), "differs from auth.key; give the key once")
            pub = f(rm, "peer_pubkey", rp, self._pubkey_file, None)
            # RFC 2409 5.2 encrypts nonces and IDs with RSA: both keys must be RSA keys.
            for kp, fp, kind in ((_join(rp, "key"), rkey, "private key"),
                                 (_join(rp, "peer_pubkey"), pub, "public key")):
                if fp and not _is_rsa(self.load_pem(fp, kind, lambda msg: None)):
                    self.err(kp, f"'{fp}' is not an RSA key (RSA-encrypted nonces need RSA)")
            if len(self.problems) > before:
                raise _Bad()
            return Auth("rsa_encr", cert=cert, key=rkey or key, ca=ca, peer_pubkey=pub)
        for k in ("cert", "key", "ca"):
            if k not in m:
                self.err(_join(path, k), "required for certificate authentication")
        if cert and key:
            c = self.load_pem(cert, "certificate", lambda msg: None)
            k = self.load_pem(key, "private key", lambda msg: None)
            if c is not None and k is not None and not _same_public_key(c.public_key(),
                                                                        k.public_key()):
                self.err(_join(path, "key"), f"'{key}' is not the key of certificate '{cert}'")
        if len(self.problems) > before:
            raise _Bad()
        return Auth("cert", cert=cert, key=key, ca=ca)

    # PEM/DER files are parsed here so that a wrong file is a config error, not a failed
    # handshake later.
    def _cert_file(self, v, path):
        fp = self.file_path(v, path)
        self.load_pem(fp, "certificate", lambda msg: self.fail(path, msg))
        return fp

    def _key_file(self, v, path):
        fp = self.file_path(v, path)
        self.load_pem(fp, "private key", lambda msg: self.fail(path, msg))
        self.exposed_secret(path, fp)
        return fp

    def _pubkey_file(self, v, path):
        fp = self.file_path(v, path)
        self.load_pem(fp, "public key", lambda msg: self.fail(path, msg))
        return fp

    def _ca_files(self, v, path):
        items = v if isinstance(v, list) else [v]
        if not items:
            self.fail(path, "empty list")
        out = []
        for i, item in enumerate(items):
            p = f"{path}[{i}]" if isinstance(v, list) else path
            try:
                out.append(self._cert_file(item, p))
            except _Bad:
                pass
        return tuple(out)

    def _proposal_text(self, v, path) -> str:
        if isinstance(v, list):
            if not v or not all(isinstance(i, str) for i in v):
                self.fail(path, "expected a proposal string or a list of proposal strings")
            return ", ".join(v)
        if not isinstance(v, str):
            self.fail(path, f"expected a proposal string, got {_tname(v)}")
        return v

    def _ike(self, version: int, allow_legacy: bool, auth_method: str | None):
        def conv(v, path):
            if isinstance(v, list) and v and all(isinstance(i, dict) for i in v):
                return self._isakmp_policies(v, path, version, allow_legacy, auth_method)
            text = self._proposal_text(v, path)
            try:
                props = parse_proposals(text, "ike", allow_legacy=allow_legacy)
            except ProposalError as e:
                self.fail(path, str(e))
            if version == 1:
                for p in props:
                    if p.aead:
                        self.fail(path, f"IKEv1 has no AEAD ISAKMP transform: "
                                        f"'{p.encryption[0]}' (use it in esp:)")
                    # IKEv1's PRF is the HMAC of the negotiated hash (RFC 2409 section 4).
                    if p.prf != tuple("prf" + i for i in p.integrity):
                        self.fail(path, f"IKEv1 has no separate PRF: '{p.prf[0]}' must follow "
                                        f"the hash ('prf{p.integrity[0]}') or be left out")
            return props
        return conv

    # Cisco `crypto isakmp policy SEQ`: a list of {seq, encryption, hash, group, lifetime,
    # authentication}, tried in SEQ order. The words are proposals.py's (ISAKMP_*).

    def _isakmp_policies(self, items, path, version, allow_legacy, auth_method):
        if version != 1:
            self.fail(path, "ISAKMP policy lists are IKEv1 (version: 1); "
                            "for IKEv2 write proposals like aes128-sha256-modp2048")
        out: list[tuple[int, Proposal]] = []
        seqs: set[int] = set()
        lifetimes: dict[int, str] = {}  # policy lifetime -> the first key path naming it
        keys = {"seq": 1, "encryption": 1, "hash": 1, "group": 1, "authentication": 1,
                "lifetime": 1}
        for i, item in enumerate(items):
            p = f"{path}[{i}]"
            try:
                pm = self.mapping(item, p, keys)
                seq = self.field(pm, "seq", p, self.integer(1, 10000), i + 1)
                if seq in seqs:
                    self.err(_join(p, "seq"), f"duplicate seq {seq}")
                seqs.add(seq)
                for k in ("encryption", "group"):
                    if k not in pm:
                        # Cisco's defaults (des, group 1) are broken; vpnd wants them named.
                        self.err(_join(p, k), "required (Cisco's default is not assumed)")
                enc = self.field(pm, "encryption", p,
                                 self._policy_word(_vocab.ISAKMP_ENCRYPTION), None)
                hsh = self.field(pm, "hash", p, self._policy_word(_vocab.ISAKMP_HASH), "sha1")
                grp = self.field(pm, "group", p, self._policy_group, None)
                if "authentication" in pm:
                    a = self.field(pm, "authentication", p,
                                   self.choice(*_vocab.ISAKMP_AUTHENTICATION), None)
                    # One connection has one set of credentials (psk / auth.cert /
                    # auth.rsa_encr); a policy may only name that method.
                    if a and auth_method and _vocab.ISAKMP_AUTHENTICATION[a] != auth_method:
                        self.err(_join(p, "authentication"),
                                 f"{a} does not match the connection's credentials "
                                 f"({auth_method})")
                if "lifetime" in pm:
                    life = self.field(pm, "lifetime", p, self.integer(60, 86400 * 7), None)
                    if life is not None:
                        lifetimes.setdefault(life, _join(p, "lifetime"))
                if enc and hsh and grp:
                    try:
                        out.append((seq, _vocab.isakmp_policy(enc, hsh, grp,
                                                              allow_legacy=allow_legacy)))
                    except ProposalError as e:
                        self.err(p, str(e))
            except _Bad:
                continue
        if len(lifetimes) > 1:
            # The ISAKMP SA lifetime is one value per connection (lifetime.ike), offered
            # with every policy; different values per policy cannot be honoured.
            first, second = list(lifetimes.items())[:2]
            self.err(second[1], f"{second[0]} differs from {first[1]} ({first[0]}); vpnd has "
                                "one ISAKMP SA lifetime per connection: give the same value")
        elif lifetimes:
            self._policy_lifetime = next(iter(lifetimes.items()))
        if not out:
            raise _Bad()
        return tuple(prop for _, prop in sorted(out, key=lambda t: t[0]))

    def _policy_word(self, table):
        def conv(v, path):
            try:
                return _vocab.isakmp_word(table, v, _show(v))
            except ProposalError as e:
                self.fail(path, str(e))
        return conv

    def _policy_group(self, v, path):
        try:
            return _vocab.isakmp_group(v, _tname(v))
        except ProposalError as e:
            self.fail(path, str(e))

    def _child(self, m, path, allow_legacy, is_manual):
        """esp:/ah:/pfs: -> (esp proposals with AH bundles folded in, ah-only proposals)."""
        esp: tuple[Proposal, ...] = ()
        ah: tuple[Proposal, ...] = ()
        ok = True
        esp_given = "esp" in m and m["esp"] is not None and m["esp"] != "none"
        if esp_given:
            try:
                text = self._proposal_text(m["esp"], _join(path, "esp"))
                esp = parse_proposals(text, "esp", allow_legacy=allow_legacy)
            except _Bad:
                ok = False
            except ProposalError as e:
                self.err(_join(path, "esp"), str(e))
                ok = False
            if esp and esp[0].protocol == "ah":  # a Cisco transform set of AH words only
                ah, esp = esp, ()
        if "ah" in m and m["ah"] is not None:
            try:
                text = self._proposal_text(m["ah"], _join(path, "ah"))
                ah_extra = parse_proposals(text, "ah", allow_legacy=allow_legacy)
                if ah:
                    self.err(_join(path, "ah"), "AH is already given by the esp: transform set")
                    ok = False
                elif any(p.ah_integrity for p in esp):
                    self.err(_join(path, "ah"), "AH is already given by the esp: transform set")
                    ok = False
                elif esp:
                    # ESP+AH bundle (the seed's "ESP + AH"): AH integrity alternatives on
                    # every ESP proposal.
                    integ = tuple(dict.fromkeys(i for p in ah_extra for i in p.integrity))
                    esp = tuple(Proposal("esp", p.encryption, p.integrity, p.prf, p.dh, p.esn,
                                         integ) for p in esp)
                    ah = ah_extra
                else:
                    ah = ah_extra
            except _Bad:
                ok = False
            except ProposalError as e:
                self.err(_join(path, "ah"), str(e))
                ok = False
        elif not esp_given and not ah and "esp" in m:
            self.err(_join(path, "esp"), "none given: name ESP proposals or an ah: proposal")
            ok = False
        if ok and not esp_given and not ah and not is_manual:
            esp = parse_proposals(DEFAULT_ESP, "esp")
        if ok and not esp_given and not ah and is_manual:
            self.err(_join(path, "esp"), "manual keying needs esp: (or ah:) naming the algorithms")
        if "pfs" in m:
            pp = _join(path, "pfs")
            v = m["pfs"]
            if is_manual:
                pass  # reported with the other IKE-only keys
            elif v is False or v is None:
                pass
            elif v is True:
                self.err(pp, "name the group, e.g. pfs: group14 "
                             "(Cisco's default group1 is not assumed)")
            elif not isinstance(v, (str, int)):
                self.err(pp, f"expected a DH group like group14 or modp2048, got {_tname(v)}")
            else:
                word = f"group{v}" if isinstance(v, int) else v.strip()
                try:
                    (dhp,) = parse_proposals(f"aes128-sha256-{word}", "ike",
                                             allow_legacy=allow_legacy)
                    if len(dhp.dh) != 1 or "-" in word:
                        raise ProposalError(f"{_show(v)} is not one DH group")
                except ProposalError as e:
                    self.err(pp, str(e))
                else:
                    if any(p.dh for p in esp + ah):
                        self.err(pp, "the esp:/ah: proposals already name a DH group")
                    else:
                        esp = tuple(_with_dh(p, dhp.dh) for p in esp)
                        ah = tuple(_with_dh(p, dhp.dh) for p in ah)
        return esp, ah

    def _subnets(self, v, path):
        items = v if isinstance(v, list) else [v]
        if not items:
            self.fail(path, "empty list")
        out = []
        bad = False
        for i, item in enumerate(items):
            try:
                out.append(self.subnet(item, f"{path}[{i}]" if isinstance(v, list) else path))
            except _Bad:
                bad = True
        if bad:
            raise _Bad()
        if len({n.version for n in out}) > 1:
            pass  # mixed families are fine: one SA per family pair is negotiated
        return tuple(dict.fromkeys(out))

    def _transport_ts(self, path, local, peer, local_ts, remote_ts):
        # Transport mode protects the peers' own traffic (RFC 4301 4.1): selectors are hosts.
        for key, nets in (("local_ts", local_ts), ("remote_ts", remote_ts)):
            for n in nets:
                if n.num_addresses != 1:
                    self.err(_join(path, key),
                             f"transport mode protects the gateways' own addresses; {n} is a subnet")
                    break

    def _lifetime(self, v, path):
        m = self.mapping(v, path, {"ike": 1, "seconds": 1, "kilobytes": 1})
        d = Lifetime()
        f = self.field
        lt = Lifetime(ike=f(m, "ike", path, self.integer(1, 2**31 - 1), d.ike),
                      seconds=f(m, "seconds", path, self.integer(1, 2**31 - 1), d.seconds),
                      kilobytes=f(m, "kilobytes", path, self.integer(0, 2**42), d.kilobytes))
        return lt

    def _dpd(self, v, path):
        m = self.mapping(v, path, {"interval": 1, "retry": 1, "mode": 1, "action": 1})
        d = Dpd()
        f = self.field
        return Dpd(interval=f(m, "interval", path, self.integer(0, 86400), d.interval),
                   retry=f(m, "retry", path, self.integer(1, 100), d.retry),
                   mode=f(m, "mode", path, self.choice("periodic", "on-demand"), d.mode),
                   action=f(m, "action", path, self.choice("restart", "clear", "hold"), d.action))

    def _rri(self, v, path):
        if isinstance(v, bool):
            return Rri(enabled=v)
        m = self.mapping(v, path, {k: 1 for k in Rri.__dataclass_fields__})
        d = Rri()
        f = self.field
        return Rri(enabled=f(m, "enabled", path, self.boolean, d.enabled),
                   next_hop=f(m, "next_hop", path, self.ip, None),
                   metric=f(m, "metric", path, self.integer(0, 2**32 - 1), None),
                   tag=f(m, "tag", path, self.integer(1, 255), None),  # Linux route protocol (net/routes.py)
                   static=f(m, "static", path, self.boolean, d.static),
                   remote_peer=f(m, "remote_peer", path, self.boolean, d.remote_peer))

    # --- IP compression (issue 12): `comp: deflate | lzs | none`, or Cisco's comp-lzs word
    def _comp(self, m, path, proposals) -> str | None:
        from_set = next((p.compression[0] for p in proposals if p.compression), None)
        if "comp" not in m:
            return from_set
        v = m["comp"]
        if v is False or v is None:          # YAML `comp: no` / `comp: false`
            v = "none"
        if not isinstance(v, str) or v not in ("deflate", "lzs", "none"):
            self.err(_join(path, "comp"), f"{_show(v)} is not one of: deflate, lzs, none")
            return None
        if from_set and v != from_set:
            self.err(_join(path, "comp"), f"'{v}' contradicts comp-{from_set} in the transform set")
        return None if v == "none" else v

    # --- manual keying (the seed's `set session-key`)
    def _manual(self, v, path, esp: tuple[Proposal, ...], ah: tuple[Proposal, ...],
                comp: str | None = None) -> Manual | None:
        try:
            m = self.mapping(v, path, {"inbound": 1, "outbound": 1})
        except _Bad:
            return None
        esp_alg = (esp[0].encryption[0], esp[0].integrity[0] if esp[0].integrity else None) \
            if esp else None
        ah_alg = (esp[0].ah_integrity[0] if esp and esp[0].ah_integrity
                  else ah[0].integrity[0] if ah else None)
        dirs = {}
        for d in ("inbound", "outbound"):
            dp = _join(path, d)
            if d not in m:
                self.err(dp, "required")
                continue
            try:
                dirs[d] = self._manual_direction(m[d], dp, esp_alg, ah_alg, comp)
            except _Bad:
                pass
        if len(dirs) != 2:
            return None
        return Manual(inbound=dirs["inbound"], outbound=dirs["outbound"],
                      esn=bool(esp and esp[0].esn[0]) or bool(ah and ah[0].esn[0]))

    def _manual_direction(self, v, path, esp_alg, ah_alg, comp=None) -> ManualDirection:
        m = self.mapping(v, path, {"esp": 1, "ah": 1, "ipcomp": 1})
        before = len(self.problems)
        esp = ah = None
        if esp_alg and "esp" not in m:
            self.err(_join(path, "esp"), "required: the connection's esp: names ESP")
        if ah_alg and "ah" not in m:
            self.err(_join(path, "ah"), "required: the connection's ah: names AH")
        if "esp" in m and not esp_alg:
            self.err(_join(path, "esp"), "the connection has no ESP proposal (esp:)")
        if "ah" in m and not ah_alg:
            self.err(_join(path, "ah"), "the connection has no AH proposal (ah:)")
        if "esp" in m and esp_alg:
            esp = self._manual_esp(m["esp"], _join(path, "esp"), *esp_alg)
        if "ah" in m and ah_alg:
            ah = self._manual_ah(m["ah"], _join(path, "ah"), ah_alg)
        cpi = None
        if "ipcomp" in m and not comp:
            self.err(_join(path, "ipcomp"),
                     "the connection does not compress (comp: deflate|lzs, or comp-lzs in esp:)")
        elif comp:
            # without a CPI the algorithm's well-known one (RFC 3173 3.3: CPI = transform ID)
            from vpnd.esp.ipcomp import TRANSFORM_IDS
            cpi = TRANSFORM_IDS[comp]
            if "ipcomp" in m:
                ipc = self.field(m, "ipcomp", path,
                                 lambda x, p: self.mapping(x, p, {"cpi": 1}), {})
                if "cpi" in ipc:
                    cpi = self.field(ipc, "cpi", _join(path, "ipcomp"), self._cpi, cpi)
        if len(self.problems) > before:
            raise _Bad()
        return ManualDirection(esp=esp, ah=ah, ipcomp_cpi=cpi)

    def _cpi(self, v, path) -> int:
        from vpnd.esp.ipcomp import check_cpi
        if isinstance(v, str):
            try:
                v = int(v.strip(), 0)
            except ValueError:
                self.fail(path, f"{_show(v)} is not a number")
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(path, f"expected a CPI number, got {_tname(v)} {_show(v)}")
        try:
            check_cpi(v)
        except ValueError as e:
            self.fail(path, str(e))
        return v

    def _manual_esp(self, v, path, enc: str, integ: str | None) -> ManualEsp | None:
        from vpnd.crypto.ciphers import cipher_key_size, integrity_key_size
        try:
            m = self.mapping(v, path, {"spi": 1, "enc_key": 1, "auth_key": 1})
        except _Bad:
            return None
        before = len(self.problems)
        if "spi" not in m:
            self.err(_join(path, "spi"), "required")
        spi = self.field(m, "spi", path, self._spi, None)
        enc_len = cipher_key_size(enc)
        enc_key = Secret(b"")
        if enc_len:
            if "enc_key" not in m:
                self.err(_join(path, "enc_key"), f"required: {enc_len} bytes for {enc}")
            enc_key = self.field(m, "enc_key", path, self._hex_key(enc_len, enc), enc_key)
        elif "enc_key" in m:
            self.err(_join(path, "enc_key"), f"{enc} takes no key")
        auth_key = Secret(b"")
        if integ:
            alen = integrity_key_size(integ)
            if "auth_key" not in m:
                self.err(_join(path, "auth_key"), f"required: {alen} bytes for {integ}")
            auth_key = self.field(m, "auth_key", path, self._hex_key(alen, integ), auth_key)
        elif "auth_key" in m:
            self.err(_join(path, "auth_key"),
                     f"{enc} is an AEAD cipher: its key ({enc_len} bytes with the salt) "
                     "authenticates too")
        if len(self.problems) > before:
            return None
        return ManualEsp(spi=spi, encryption=enc, integrity=integ, enc_key=enc_key,
                         auth_key=auth_key)

    def _manual_ah(self, v, path, integ: str) -> ManualAh | None:
        from vpnd.crypto.ciphers import integrity_key_size
        try:
            m = self.mapping(v, path, {"spi": 1, "key": 1})
        except _Bad:
            return None
        before = len(self.problems)
        for k in ("spi", "key"):
            if k not in m:
                self.err(_join(path, k), "required")
        spi = self.field(m, "spi", path, self._spi, None)
        key = self.field(m, "key", path, self._hex_key(integrity_key_size(integ), integ), None)
        if len(self.problems) > before:
            return None
        return ManualAh(spi=spi, integrity=integ, key=key)

    def _spi(self, v, path) -> int:
        if isinstance(v, str):
            try:
                v = int(v.strip(), 0)
            except ValueError:
                self.fail(path, f"{_show(v)} is not a number (like 0x1000)")
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(path, f"expected a number like 0x1000, got {_tname(v)}")
        if not SPI_MIN <= v <= SPI_MAX:
            # RFC 4303 2.1: 1..255 are reserved by IANA; 0 means "no SA".
            self.fail(path, f"SPI {v:#x} is out of range (0x100..0xffffffff; 1-255 are reserved)")
        return v

    def _hex_key(self, length: int, alg: str):
        def conv(v, path) -> Secret:
            if not isinstance(v, str):
                self.fail(path, f"expected a hex string, got {_tname(v)} (quote it)")
            s = re.sub(r"[\s:]", "", v)
            if s[:2].lower() == "0x":
                s = s[2:]
            try:
                key = binascii.unhexlify(s)
            except (binascii.Error, ValueError):
                self.fail(path, "is not a hex string")
            if len(key) != length:
                what = " (key plus 4-byte salt, RFC 4106 8.1 / RFC 7634 2)" if alg in AEAD else ""
                self.fail(path, f"{alg} needs {length} bytes{what}, got {len(key)}")
            return Secret(key)
        return conv

    def cross_checks(self, conns: list[Connection]) -> None:
        # Inbound manual SAs are looked up by (protocol, SPI): they must be unique.
        seen: dict[tuple[str, int], str] = {}
        for c in conns:
            if not c.manual:
                continue
            for proto, sa in (("esp", c.manual.inbound.esp), ("ah", c.manual.inbound.ah)):
                if sa is None:
                    continue
                key = (proto, sa.spi)
                if key in seen:
                    self.err(f"connections.{c.name}.manual.inbound.{proto}.spi",
                             f"SPI {sa.spi:#x} is already used by connection '{seen[key]}'")
                else:
                    seen[key] = c.name


def esp_given_text(m: dict) -> bool:
    """True when esp: names ESP itself (so an AH bundle came from the ah: key)."""
    v = m.get("esp")
    text = " ".join(v) if isinstance(v, list) else v if isinstance(v, str) else ""
    return bool(text) and "ah-" not in text.lower()


def _with_dh(p: Proposal, dh: tuple[str, ...]) -> Proposal:
    return Proposal(p.protocol, p.encryption, p.integrity, p.prf, dh, p.esn, p.ah_integrity)


def _decode_psk(text: str, fail: Callable[[str], None]) -> Secret:
    """strongSwan's secret encodings: `0x` hex, `0s` base64, else the UTF-8 text itself."""
    if not text:
        fail("must not be empty")
    if text.startswith("0x"):
        try:
            value = binascii.unhexlify(re.sub(r"[\s:]", "", text[2:]))
        except (binascii.Error, ValueError):
            fail("starts with 0x but is not valid hex")
    elif text.startswith("0s"):
        try:
            value = base64.b64decode(text[2:], validate=True)
        except (binascii.Error, ValueError):
            fail("starts with 0s but is not valid base64")
    else:
        value = text.encode("utf-8")
    if not value:
        fail("must not be empty")
    return Secret(value)


def _is_rsa(obj) -> bool:
    from cryptography.hazmat.primitives.asymmetric import rsa
    if hasattr(obj, "public_key") and not isinstance(obj, (rsa.RSAPrivateKey,)):
        obj = obj.public_key()  # a certificate given as peer_pubkey
    return isinstance(obj, (rsa.RSAPrivateKey, rsa.RSAPublicKey))


def _same_public_key(a, b) -> bool:
    from cryptography.hazmat.primitives import serialization
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        return a.public_bytes(*fmt) == b.public_bytes(*fmt)
    except (ValueError, TypeError):
        return False
