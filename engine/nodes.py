"""The Ollama servers the scheduler dispatches to: per backend ([backends.NAME]; [backend] is one
named "default"), a residency model reconciled from that server's /api/ps, the policy's view of
it, and its slots. One queue feeds them all: a dispatch picks a (ticket, backend) pair, each free
backend's best ticket by the policy as that backend sees it (the `vram` term reads where models
are on it), then the best of those (engine/scheduler.py).

A reload may add, change or remove backends. A removed one finishes what it runs and takes
nothing new (`retiring`); it is dropped once its last request ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from engine.cloud import CloudModels
from engine.grants import StateView
from engine.ledger import ClientLedger
from engine.residency import ResidencyModel
from engine.service import ServiceAccount
from policy.load import CompiledFile, NodeSettings
from schemas.model_name import canonical_model, canonical_pattern
from schemas.ticket import Ticket

MAX_SERVES_CACHE = 4096  # models remembered per node for its allow-list (names come from clients)


@dataclass(eq=False, slots=True)
class Node:
    name: str
    residency: ResidencyModel
    state: StateView
    slots: int
    models: tuple[str, ...] = ()  # canonical globs; empty: every model
    weight: float = 1.0
    index: int = 0  # its place in the file: the last tie-break between backends
    url: str = ""
    local: int = 0  # local requests in flight here
    retiring: bool = False  # removed by a reload: finishes what it runs, takes nothing new
    down: bool = False  # its server does not answer: no dispatches until it does (the sidecar)
    _serves: dict[str, bool] = field(default_factory=dict)

    def free(self) -> bool:
        return not self.retiring and not self.down and self.local < self.slots

    def serves(self, model: str) -> bool:
        """Whether the backend's `models` allow-list lets it serve `model`."""
        if not self.models:
            return True
        found = self._serves.get(model)
        if found is None:
            found = any(fnmatchcase(model, p) for p in self.models)
            if len(self._serves) < MAX_SERVES_CACHE:
                self._serves[model] = found
        return found

    def busy(self) -> float:
        """Its share of slots in use (what the policy's backend_load term reads)."""
        return min(1.0, self.local / self.slots) if self.slots > 0 else 1.0

    def load(self) -> float:
        """Its share of slots in use, over its weight: between two backends the policy scores
        alike, the less loaded one takes the request."""
        return self.local / self.slots / self.weight


def configure(
    nodes: dict[str, Node], settings: CompiledFile, ledger: ClientLedger, is_cloud: CloudModels,
    service: ServiceAccount, track_use: bool, new_host: bool = False,
) -> dict[str, Node]:
    """The backends of `settings`, keeping what each known one has learned (its residency); a
    backend no longer listed retires if it still runs requests, else goes. `new_host`: requests
    now go to other servers, whose cards may give the same tag another size."""
    out: dict[str, Node] = {}
    overrides = {canonical_model(k): v for k, v in settings.model_sizes.items()}
    listed = {spec.name for spec in settings.nodes}
    one = len(settings.nodes) == 1 and len(nodes) == 1
    claimed: set[int] = set()
    for index, spec in enumerate(settings.nodes):
        node = nodes.get(spec.name)
        if node is None:  # a new name: the same server renamed keeps what it learned, and its
            # requests in flight keep counting against its slots
            node = next((n for n in nodes.values() if id(n) not in claimed and n.name not in listed
                         and (one or _same(n.url, spec.url))), None)
        if node is None:
            residency = _residency(spec)
            node = Node(spec.name, residency, StateView(ledger, residency, is_cloud, service), 1)
            node.state = StateView(ledger, residency, is_cloud, service, load=node.busy)  # its own
        claimed.add(id(node))
        # With one backend the sidecar says when the server changed (the upstream may be given
        # from outside the file); with several, a backend's URL is its server.
        moved = new_host if one or not node.url else not _same(node.url, spec.url)
        if moved:  # what it learned was another server's
            node.residency.ps_sizes.clear()
            node.residency.tag_sizes.clear()
            node.residency.load_times.clear()
        node.name, node.url, node.retiring = spec.name, spec.url, False
        _apply(node, spec, settings, overrides, track_use, index)
        out[spec.name] = node
    for name, node in nodes.items():
        if id(node) not in claimed and node.local > 0:
            node.retiring = True
            out[name] = node
    return out


def _same(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _residency(spec: NodeSettings) -> ResidencyModel:
    return ResidencyModel(vram_gb=spec.vram_gb, max_loaded=spec.max_loaded_models,
                          num_parallel=spec.num_parallel)


def _apply(
    node: Node, spec: NodeSettings, settings: CompiledFile, overrides: dict[str, float],
    track_use: bool, index: int,
) -> None:
    r = node.residency
    r.vram_gb, r.max_loaded = spec.vram_gb, spec.max_loaded_models
    r.set_parallel(settings.model_parallel, spec.num_parallel)
    r.overrides = dict(overrides)
    r.resident_factor = settings.backend.resident_factor
    r.track_use = track_use
    r._changed()
    node.slots, node.weight, node.index = spec.max_parallel, spec.weight, index
    models = tuple(canonical_pattern(m) for m in spec.models)
    if models != node.models:
        node.models, node._serves = models, {}


def first(nodes: dict[str, Node]) -> Node:
    """The backend views and metrics that know one backend describe: the first in the file."""
    return min((n for n in nodes.values() if not n.retiring), key=lambda n: n.index,
               default=next(iter(nodes.values())))


def has_pulled(nodes: dict[str, Node], node: Node, model: str, is_cloud: CloudModels) -> bool:
    """Whether `node` may be sent a local model: its /api/tags list the model, or no backend
    that may serve it (its allow-list) lists it, so none is known to have it and each answers
    for itself, as one backend would. Otherwise Ollama there would answer 404 while another
    backend has the model: the request waits for that one (down or busy)."""
    listed = is_cloud.listed_on(model)
    if not listed or node.name in listed or "" in listed:
        return True
    return not any(n.serves(model) for name in listed if (n := nodes.get(name)) is not None and not n.retiring)


def reads_evictions(settings: CompiledFile) -> bool:
    """Whether the active policy has a term that reads which models a load would evict."""
    return any(t.type.name == "swap_cost" for t in settings.terms.get(settings.active.name, ()))


def cost_rank(residency: ResidencyModel, ticket: Ticket, is_cloud: CloudModels) -> int:
    """What the ticket costs on a backend: 0 its runner is loaded there (or a cloud model), 1 it
    loads beside what is there, 2 it evicts something."""
    if is_cloud(ticket.model):
        return 0
    action = residency.plan(ticket.model, residency.runner_for(ticket.model, ticket.variant)).action
    return {"attach": 0, "load": 1}.get(action, 2)
