"""The control commands of vpnctl (up, down, rekey, reload) and the waiters that end them.

`Commands` carries out a command against the daemon (its IKE core, manual SAs and
connection state) and waits, with a timeout, for the event that completes it: a CHILD_SA
installed (`up`, `rekey`), the last one deleted (`down`), the IKE SA rekeyed (`rekey
--ike`); a failure event of the connection ends the wait with its message. The daemon calls
`waiters.wake()` / `waiters.fail()` as its actions are carried out; control.py calls the
`cmd_*` coroutines through the daemon. Errors are vpnd.control.CommandError (one line, no
secrets).
"""

from __future__ import annotations

import asyncio

from vpnd.control import CommandError

GOALS = {"up": "the CHILD_SA to be installed", "down": "the CHILD_SA to be deleted",
         "ike_rekeyed": "the IKE SA to be rekeyed"}


class Waiters:
    """Futures waiting for (connection, what) events."""

    def __init__(self):
        self.items: list[tuple[str, str, asyncio.Future]] = []

    def wake(self, connection: str, what: str) -> None:
        for c, w, fut in list(self.items):
            if c == connection and w == what and not fut.done():
                fut.set_result(True)

    def fail(self, connection: str, reason: str) -> None:
        for c, _w, fut in list(self.items):
            if c == connection and not fut.done():
                fut.set_exception(CommandError(reason))

    async def wait(self, connection: str, what: str, timeout: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        item = (connection, what, fut)
        self.items.append(item)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise CommandError(f"{connection}: timed out after {timeout:g}s waiting for "
                               f"{GOALS.get(what, what)}") from None
        finally:
            self.items.remove(item)


class Commands:
    def __init__(self, daemon):
        self.d = daemon
        self.waiters = Waiters()

    def _require(self, name: str):
        conn = self.d._conn(name)
        if conn is None:
            raise CommandError(f"no connection named {name!r}")
        return conn

    def _need_ike(self) -> None:
        if self.d.ike is None:
            raise CommandError("IKE is not available in this build")

    async def up(self, name: str, timeout: float = 30.0) -> dict:
        d = self.d
        conn = self._require(name)
        if conn.manual is not None:
            self._need_ike()
            d._run_actions(d.ike.initiate(name, d._now()))
            if not d.ike.manual.has(name):
                raise CommandError(f"{name}: manual SA could not be installed (see the daemon's log)")
            return {"connection": name, "state": "up"}
        self._need_ike()
        if conn.peer in (None, "%any"):
            raise CommandError(f"{name}: peer is %any: this connection only responds")
        if d._has_child(name):
            return {"connection": name, "state": "up", "already": True}
        d._note_attempt(name)
        await self._act_and_wait(self.waiters.wait(name, "up", timeout),
                                 lambda: d.ike.initiate(name, d._now()))
        return {"connection": name, "state": "up"}

    async def down(self, name: str, timeout: float = 15.0) -> dict:
        d = self.d
        conn = self._require(name)
        if conn.manual is not None:
            self._need_ike()
            d._run_actions(d.ike.terminate(name, d._now()))
            return {"connection": name, "state": "down"}
        self._need_ike()
        terminate = lambda: d.ike.terminate(name, d._now())  # noqa: E731
        d._set_admin_down(name, True)
        d._attempt.pop(name, None)
        if d._has_child(name):
            await self._act_and_wait(self.waiters.wait(name, "down", timeout), terminate)
        else:
            d._run_actions(terminate())
        return {"connection": name, "state": "down"}

    async def rekey(self, name: str, ike: bool = False, timeout: float = 30.0) -> dict:
        d = self.d
        conn = self._require(name)
        if conn.manual is not None:
            raise CommandError(f"{name}: manual keying has no rekey (change the keys in the config and reload)")
        self._need_ike()
        if ike:
            wait = self.waiters.wait(name, "ike_rekeyed", timeout)
        else:
            before = {c.child_id for c in d.children.values() if c.connection == name}
            wait = self._wait_new_child(name, before, timeout)
        await self._act_and_wait(wait, lambda: d.ike.rekey(name, d._now(), ike=ike))
        return {"connection": name, "rekeyed": "ike" if ike else "child"}

    async def reload(self) -> dict:
        return await self.d.reload_async()

    async def _act_and_wait(self, wait, start) -> None:
        """Register the waiter `wait` (a coroutine), then run the core's `start()` actions
        (the core may answer at once), then wait. If start() raises, the waiter goes too
        instead of timing out later with nobody to tell."""
        task = asyncio.ensure_future(wait)
        await asyncio.sleep(0)
        try:
            self.d._run_actions(start())
        except BaseException:
            task.cancel()
            raise
        await task

    async def _wait_new_child(self, name: str, before: set, timeout: float):
        d = self.d
        deadline = d._now() + timeout
        while not any(c.connection == name and c.child_id not in before for c in d.children.values()):
            remaining = deadline - d._now()
            if remaining <= 0:
                raise CommandError(f"{name}: timed out after {timeout:g}s waiting for the new CHILD_SA")
            try:
                await self.waiters.wait(name, "up", remaining)
            except CommandError as e:
                if "timed out" in str(e):
                    continue
                raise
