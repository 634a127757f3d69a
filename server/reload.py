"""Hot reload: the file watcher (content hash about once a second), SIGHUP and the admin endpoint all
end in `Reloader.reload`, which compiles aside (in a thread: it reads a file), swaps on success
and tells the scheduler; on error the old policy stays and the error is logged and counted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from policy.holder import PolicyHolder, ReloadResult
from policy.load import CompiledFile

log = logging.getLogger("smart_proxy.reload")

WATCH_INTERVAL = 1.0


class Reloader:
    def __init__(
        self,
        holder: PolicyHolder,
        *,
        on_swap: Callable[[CompiledFile], None],
        on_result: Callable[[str], None],
        interval: float = WATCH_INTERVAL,
    ) -> None:
        self._holder = holder
        self._on_swap = on_swap
        self._on_result = on_result
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._signalled: set[asyncio.Task[ReloadResult]] = set()  # SIGHUP reloads under way

    async def reload(self, *, only_if_changed: bool = False) -> ReloadResult:
        result = await asyncio.to_thread(self._holder.reload, only_if_changed=only_if_changed)
        if result.changed:
            current = self._holder.current
            self._on_swap(current)
            self._on_result("ok")
            log.info(
                "policy reloaded: %s version %s (active %s)",
                self._holder.path, result.version, current.active.name,
            )
        elif not result.ok:
            self._on_result("error")
            log.error("policy reload failed, keeping version %s:\n%s", result.version, result.error)
        return result

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="policy-watcher")

    def reload_soon(self) -> None:
        """For the SIGHUP handler: schedule a full reload without blocking the signal handler."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._signalled.add(task)
        task.add_done_callback(self._signalled.discard)
        task.add_done_callback(_report)

    async def stop(self) -> None:
        tasks = [*self._signalled, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.reload(only_if_changed=True)
            except Exception:
                log.exception("policy watcher error; it keeps watching")


def _report(task: asyncio.Task[ReloadResult]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("SIGHUP reload failed: %s", task.exception())
