"""rtnetlink calls (pyroute2) from anywhere, also from inside the daemon's event loop.

pyroute2's synchronous IPRoute drives an asyncio loop of its own and refuses to run in a
thread whose loop is already running. Netlink calls are rare (start-up, SA install and
delete), so they run on one dedicated worker thread with its own IPRoute, and the caller
waits for the answer (a few milliseconds). One thread also keeps the calls in order.
"""

from __future__ import annotations

import atexit
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_local = threading.local()
TIMEOUT = 10.0


def _ipr():
    ipr = getattr(_local, "ipr", None)
    if ipr is None:
        from pyroute2 import IPRoute
        ipr = _local.ipr = IPRoute()
    return ipr


def call(fn: Callable[..., T]) -> T:
    """Run fn(ipr) on the netlink thread and return its result (exceptions propagate)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vpnd-netlink")
        ex = _executor
    return ex.submit(lambda: fn(_ipr())).result(TIMEOUT)


def _close_in_thread():
    ipr = getattr(_local, "ipr", None)
    if ipr is not None:
        _local.ipr = None
        ipr.close()


def shutdown() -> None:
    """Close the netlink socket and stop the thread (at exit; a later call starts anew)."""
    global _executor
    with _lock:
        ex, _executor = _executor, None
    if ex is not None:
        try:
            ex.submit(_close_in_thread).result(TIMEOUT)
        except Exception:
            pass
        ex.shutdown(wait=True)


atexit.register(shutdown)
