"""The emulator's Starlette app: Ollama's routes, its plain-text 404/405, and /sim/stats."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from sim import http_compat, http_manage, http_native, http_openai
from sim.config import Settings
from sim.driver import Emulator
from sim.hostcheck import HostCheck
from sim.http_common import json_response


async def sim_stats(request: Request) -> Response:
    """Emulator-only counters; not part of Ollama's API (see docs/emulator.md)."""
    emu: Emulator = request.app.state.emulator
    emu.tick()
    backend = emu.backend
    body = backend.stats.as_json() | {
        "time_scale": emu.settings.time_scale,
        "clock_seconds": round(emu.now(), 9),
        "pending": len(backend.pending),
        "running": sum(len(r.running) for r in backend.runners.values()),
        "vram_used": sum(r.vram for r in backend.runners.values()),
        "vram_total": emu.settings.vram,
    }
    return json_response(body)


async def sim_stats_reset(request: Request) -> Response:
    """Zero the counters (not the models' state), e.g. between benchmark phases."""
    emu: Emulator = request.app.state.emulator
    emu.tick()
    emu.backend.reset_stats()
    return Response(status_code=204)


async def _not_found(request: Request, exc: Exception) -> Response:
    # Go's net/http wording; Ollama answers unknown paths and wrong methods in plain text.
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        return PlainTextResponse("405 method not allowed", status_code=405)
    return PlainTextResponse("404 page not found", status_code=404)


def build_app(settings: Settings, emulator: Emulator | None = None) -> Starlette:
    """An ASGI app serving one emulated Ollama. Pass `emulator` to share it with the caller."""
    emu = emulator or Emulator(settings)
    routes = [
        Route("/", http_manage.root, methods=["GET"]),  # HEAD is implied
        Route("/api/version", http_manage.version, methods=["GET"]),
        Route("/api/tags", http_manage.tags, methods=["GET"]),
        Route("/api/ps", http_manage.ps, methods=["GET"]),
        Route("/api/show", http_manage.show, methods=["POST"]),
        Route("/api/pull", http_manage.pull, methods=["POST"]),
        Route("/api/create", http_manage.create, methods=["POST"]),
        Route("/api/copy", http_manage.copy, methods=["POST"]),
        Route("/api/delete", http_manage.delete, methods=["DELETE"]),
        Route("/api/generate", http_native.generate, methods=["POST"]),
        Route("/api/chat", http_native.chat, methods=["POST"]),
        Route("/api/embed", http_native.embed, methods=["POST"]),
        Route("/api/embeddings", http_native.embeddings, methods=["POST"]),
        Route("/v1/chat/completions", http_openai.chat_completions, methods=["POST"]),
        Route("/v1/completions", http_openai.completions, methods=["POST"]),
        Route("/v1/embeddings", http_openai.embeddings, methods=["POST"]),
        Route("/v1/responses", http_compat.responses, methods=["POST"]),
        Route("/v1/messages", http_compat.messages, methods=["POST"]),
        Route("/v1/audio/transcriptions", http_compat.transcriptions, methods=["POST"]),
        Route("/v1/models", http_openai.models, methods=["GET"]),
        Route("/v1/models/{model:path}", http_openai.model, methods=["GET"]),
        Route("/sim/stats", sim_stats, methods=["GET"]),
        Route("/sim/stats/reset", sim_stats_reset, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={404: _not_found, 405: _not_found},
        middleware=[Middleware(HostCheck)],
    )
    app.state.emulator = emu
    return app
