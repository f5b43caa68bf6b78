"""The TUN device between the protected subnets and the data plane.

Plain IPv4 packets cross it (IFF_TUN | IFF_NO_PI: no packet-information header), each behind
a virtio_net_hdr (IFF_VNET_HDR) so that decapsulated TCP segments can be written coalesced
as one GSO packet (vpnd/esp/offload.py; VPND_NO_GRO=1 turns this off to compare). The device
is not persistent, so the kernel removes it when the last file descriptor closes: also when
the daemon dies without cleaning up. Reads are non-blocking and done in bursts.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from vpnd.esp.offload import gro_coalesce
from vpnd.net import netlink

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
VNET_HDR_LEN = 10  # struct virtio_net_hdr; no offloads are enabled for reads: all zero there
_NO_VNET = bytes(VNET_HDR_LEN)
IFNAMSIZ = 16

READ_SIZE = 65535
MAX_BURST = 64


class TunError(Exception):
    """The TUN device could not be created or configured (message is for humans)."""


class TunGone(TunError):
    """The device was deleted under the open file (`ip link del`): reads fail with EBADFD
    and poll reports POLLERR for ever, so the reader must stop."""


class Tun:
    """An up, address-less TUN device; routes point at it by index."""

    def __init__(self, name: str, mtu: int, vnet_hdr: bool | None = None):
        if not name or len(name.encode()) >= IFNAMSIZ:
            raise TunError(f"invalid TUN device name {name!r}")
        self.name = name
        self.vnet_hdr = os.environ.get("VPND_NO_GRO") != "1" if vnet_hdr is None else vnet_hdr
        self.fd = -1
        self.index = 0
        self.read_errors = 0
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TunError(f"cannot open /dev/net/tun: {e.strerror}") from None
        try:
            flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if self.vnet_hdr else 0)
            ifr = struct.pack("16sH22x", name.encode(), flags)
            try:
                fcntl.ioctl(self.fd, TUNSETIFF, ifr)
            except OSError as e:
                if e.errno == errno.EBUSY:
                    raise TunError(f"TUN device {name} already exists and is in use") from None
                if e.errno == errno.EPERM:
                    raise TunError(f"no permission to create TUN device {name} (needs CAP_NET_ADMIN)") from None
                raise TunError(f"cannot create TUN device {name}: {e.strerror}") from None
            # no IPv6 link-local address (issue 7.11): the kernel would send MLD reports and
            # router solicitations into the TUN, which no tunnel carries; set before "up"
            _sysctl(f"net/ipv6/conf/{name}/addr_gen_mode", "1")
            self.set_mtu_and_up(mtu)
        except BaseException:
            self.close()
            raise

    def set_mtu_and_up(self, mtu: int) -> None:
        def do(ipr):
            links = ipr.link_lookup(ifname=self.name)
            if not links:
                raise TunError(f"TUN device {self.name} vanished")
            try:
                ipr.link("set", index=links[0], mtu=int(mtu), state="up")
            except Exception as e:  # pyroute2 NetlinkError: invalid MTU and the like
                raise TunError(f"cannot set MTU {mtu} on {self.name}: {e}") from None
            return links[0]
        self.index = netlink.call(do)
        self.mtu = int(mtu)

    def set_ipv6(self, enabled: bool) -> None:
        """IPv6 on the device only when a connection carries IPv6 (its routes need it)."""
        _sysctl(f"net/ipv6/conf/{self.name}/disable_ipv6", "0" if enabled else "1")

    def fileno(self) -> int:
        return self.fd

    def read_burst(self, limit: int = MAX_BURST) -> list[bytes]:
        """Up to `limit` packets, stopping at EAGAIN or a read error (counted); TunGone
        when the device no longer exists."""
        out = []
        read = os.read
        fd = self.fd
        try:
            if self.vnet_hdr:
                for _ in range(limit):
                    out.append(read(fd, READ_SIZE)[VNET_HDR_LEN:])
            else:
                for _ in range(limit):
                    out.append(read(fd, READ_SIZE))
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno in (errno.EBADFD, errno.EBADF):
                raise TunGone(f"TUN device {self.name} was removed") from None
            self.read_errors += 1
        return out

    def write_many(self, packets) -> None:
        """Packets in arrival order; with vnet_hdr, runs of one TCP flow go as one GSO write."""
        if not self.vnet_hdr:
            for p in packets:
                self.write(p)
            return
        fd = self.fd
        for buf in gro_coalesce(packets):
            try:
                os.write(fd, buf)
            except (BlockingIOError, OSError):
                pass  # as in write()

    def write(self, packet: bytes) -> None:
        try:
            os.write(self.fd, _NO_VNET + packet if self.vnet_hdr else packet)
        except (BlockingIOError, OSError):
            # TUN queue full or a packet the kernel refuses (malformed inner header): drop it,
            # as a router would; never let it reach the event loop.
            pass

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)  # non-persistent: the kernel removes the device here

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _sysctl(key: str, value: str) -> bool:
    """Write /proc/sys/KEY (the calling thread's network namespace); False when it cannot
    (no IPv6 in this kernel, read-only /proc/sys): never fatal."""
    try:
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)
        return True
    except OSError:
        return False


def _route_get(ipr, address: str):
    routes = ipr.route("get", dst=address)
    return routes[0] if routes else None


def link_mtu_towards(address: str) -> int | None:
    """MTU of the path the kernel routes `address` through (None when unroutable)."""
    def do(ipr):
        route = _route_get(ipr, address)
        if route is None or route.get_attr("RTA_OIF") is None:
            return None
        link = ipr.link("get", index=route.get_attr("RTA_OIF"))[0]
        mtus = [link.get_attr("IFLA_MTU")]
        metrics = route.get_attr("RTA_METRICS")
        if metrics is not None:
            mtus.append(metrics.get_attr("RTAX_MTU"))
        mtus = [m for m in mtus if m]
        return min(mtus) if mtus else None
    try:
        return netlink.call(do)
    except Exception:
        return None


def outer_path(address: str) -> tuple[int, str | None] | None:
    """(interface index, gateway or None) the kernel uses for `address` now."""
    def do(ipr):
        route = _route_get(ipr, address)
        if route is None or route.get_attr("RTA_OIF") is None:
            return None
        return route.get_attr("RTA_OIF"), route.get_attr("RTA_GATEWAY")
    try:
        return netlink.call(do)
    except Exception:
        return None


def source_address_towards(address: str) -> str | None:
    """The local address the kernel would use to reach `address`."""
    try:
        def do(ipr):
            route = _route_get(ipr, address)
            return route.get_attr("RTA_PREFSRC") if route is not None else None
        return netlink.call(do)
    except Exception:
        return None
