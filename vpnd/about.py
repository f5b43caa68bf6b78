"""The installed vpnd's version, for --version and the metrics' build info (a leaf module)."""

from __future__ import annotations


def version() -> str:
    """The installed distribution's version (pyproject.toml), not a second copy of it."""
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version("vpnd")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
