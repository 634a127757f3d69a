"""Hot reload: the file watcher (content hash about once a second), SIGHUP and the admin endpoint all
end in `Reloader.reload`. A worker thread only reads and compiles; back on the event loop, one
synchronous step swaps the holder's reference and hands the new file to `on_swap` (scheduler,
journal, consistency check), so nothing runs between the two. Reloads take turns; one cancelled
by `stop()` never swaps. On error the old policy stays and the error is logged and counted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from policy.holder import Candidate, PolicyHolder, ReloadResult
from policy.load import CompiledFile

log = logging.getLogger("smart_proxy.reload")

WATCH_INTERVAL = 1.0


class Reloader:
    def __init__(
        self,
        holder: PolicyHolder,
        *,
        on_swap: Callable[[CompiledFile], None],
        on_result: Callable[[ReloadResult], None],  # every attempt that changed or failed
        interval: float = WATCH_INTERVAL,
    ) -> None:
        self._holder = holder
        self._on_swap = on_swap
        self._on_result = on_result
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._signalled: set[asyncio.Task[ReloadResult]] = set()  # SIGHUP reloads under way
        self._turn = asyncio.Lock()  # one reload at a time: swaps happen in the order prepared
        self._stopped = False
        self._failed_swap: str | None = None  # the version whose hand-over last raised

    async def reload(self, *, only_if_changed: bool = False) -> ReloadResult:
        async with self._turn:
            prepared = await asyncio.to_thread(self._holder.prepare, only_if_changed=only_if_changed)
            if self._stopped:  # stop() came while the thread compiled: the old file stays
                return ReloadResult(
                    ok=False, changed=False, version=self._holder.current.version,
                    error="the sidecar is stopping; the reload was not applied",
                )
            if isinstance(prepared, Candidate):
                # One synchronous step on the loop: the holder and everything that follows it.
                result = self._holder.commit(prepared)
                try:
                    self._on_swap(prepared.compiled)
                except Exception as exc:  # a bug, not a bad file: keep serving, try again
                    version = prepared.compiled.version
                    if version != self._failed_swap:  # the traceback once, not every second
                        self._failed_swap = version
                        log.exception("policy reload: version %s is in force, but applying it "
                                      "failed; retrying at every check", version)
                    result = self._holder.applied_partly(
                        f"applying the new policy failed ({type(exc).__name__}: {exc}); "
                        "retrying at the next check"
                    )
                    self._on_result(result)
                    return result
                self._failed_swap = None
            else:
                result = prepared
        if result.changed:
            current = self._holder.current
            self._on_result(result)
            log.info(
                "policy reloaded: %s version %s (active %s)",
                self._holder.path, result.version, current.active.name,
            )
        elif not result.ok:
            self._on_result(result)
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
        self._stopped = True
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
