"""Several emulated Ollama servers replayed together (one per GPU): what a replay of a sidecar in
front of N backends, or of a plain load balancer in front of N Ollamas, runs against.

The event loop of sim/replay/run.py drives a `Cluster` as it drives one backend: the earliest
next event of any node, every node advanced to it. A plain balancer routes each request at its
arrival, as a gateway does, knowing nothing of models:

- round-robin: the next node in turn;
- least-outstanding: the node with the fewest requests sent and not finished (queued inside
  Ollama or running), ties to the first.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any, Literal

from engine.residency import GIB
from policy.load import CompiledFile, NodeSettings
from sim.backend import Backend, Job
from sim.config import Settings

Route = Literal["round-robin", "least-outstanding"]
ROUTES: tuple[Route, ...] = ("round-robin", "least-outstanding")
_ID_SPAN = 1 << 40  # job ids of node i start at i × this: unique across the cluster


class Cluster:
    def __init__(self, gpu: Settings, names: list[str]) -> None:
        self.names = list(names)
        self.nodes = {name: Backend(gpu, first_id=i * _ID_SPAN) for i, name in enumerate(self.names)}
        self._turn = itertools.cycle(self.names)
        self.outstanding = dict.fromkeys(self.names, 0)  # sent and not finished, per node

    def __getitem__(self, name: str) -> Backend:
        return self.nodes[name]

    def __iter__(self) -> Iterator[tuple[str, Backend]]:
        return iter(self.nodes.items())

    @property
    def now(self) -> float:
        return max(b.now for b in self.nodes.values())

    def next_event_time(self) -> float | None:
        times = [t for b in self.nodes.values() if (t := b.next_event_time()) is not None]
        return min(times) if times else None

    def advance(self, now: float) -> None:
        for backend in self.nodes.values():
            backend.advance(now)

    def take_started(self) -> list[tuple[str, Job]]:
        return [(name, job) for name, b in self.nodes.items() for job in b.take_started()]

    def route(self, how: Route) -> str:
        """The node a plain balancer sends the next request to."""
        if how == "round-robin":
            return next(self._turn)
        return min(self.names, key=lambda n: self.outstanding[n])

    def figures(self) -> dict[str, Any]:
        """The backend counters, summed over the nodes."""
        stats = [b.stats for b in self.nodes.values()]
        return {
            "loads": sum(s.loads for s in stats),
            "evictions": sum(s.evictions for s in stats),
            "reloads": sum(s.reloads for s in stats),
            "gpu_load_s": round(sum(s.load_seconds for s in stats), 3),
            "gpu_generate_s": round(sum(m.busy_seconds for s in stats for m in s.per_model.values()), 3),
        }


def on_cluster(compiled: CompiledFile, gpu: Settings, nodes: int) -> CompiledFile:
    """The policy file describing `nodes` of the simulated GPU: the file's own [backends] (their
    names, slots, allow-lists and weights) when it lists that many, else `gpu0`… each with the
    file's slots. Every node is the simulated card: policies are compared on the same hardware."""
    b = compiled.backend
    listed = compiled.nodes if len(compiled.nodes) == nodes else ()
    specs = tuple(
        NodeSettings(f"gpu{i}", f"http://sim-gpu{i}:11434", b.max_parallel, gpu.num_parallel,
                     gpu.vram / GIB, gpu.max_loaded_models) if not listed else
        dataclasses.replace(listed[i], num_parallel=gpu.num_parallel, vram_gb=gpu.vram / GIB,
                            max_loaded_models=gpu.max_loaded_models)
        for i in range(nodes)
    )
    backend = dataclasses.replace(b, vram_gb=gpu.vram / GIB, num_parallel=gpu.num_parallel,
                                  max_loaded_models=gpu.max_loaded_models)
    return dataclasses.replace(compiled, backend=backend, backends=specs)
