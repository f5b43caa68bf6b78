"""vpnd: a site-to-site IPsec VPN daemon (IKEv1/IKEv2 control plane, userspace ESP/AH data plane)."""

__version__ = "0.1.0"
