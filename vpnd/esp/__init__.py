"""Userspace ESP/AH data plane (RFC 4303, RFC 4302, RFC 3948): see dataplane.py."""

from vpnd.esp.dataplane import DataPlane
from vpnd.esp.natt import classify_udp4500
from vpnd.esp.overhead import max_inner_size, worst_case_overhead
from vpnd.esp.sa import SA, Lifetime

__all__ = ["DataPlane", "SA", "Lifetime", "classify_udp4500", "max_inner_size",
           "worst_case_overhead"]
