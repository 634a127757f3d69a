"""A minimal pass-through (Hypercorn + Starlette, no scheduling, no journal) with a choice of
upstream HTTP client, for bench/upstream_hop.py: what does the client of the upstream hop cost?

    python bench/passthrough.py --client aiohttp --port 9001 --upstream http://127.0.0.1:9000

Clients: httpx (the sidecar's today, as configured there), httpcore (httpx's transport, used
directly), aiohttp. Each relays the answer as it arrives, as the sidecar does.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

Forward = Callable[[str, bytes, dict[str, str]], Awaitable[tuple[int, str, AsyncIterator[bytes]]]]


def httpx_forward(upstream: str) -> Forward:
    import httpx

    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        timeout=httpx.Timeout(60.0), trust_env=False,
    )

    async def forward(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, AsyncIterator[bytes]]:
        response = await client.send(client.build_request("POST", upstream + path, content=body,
                                                          headers=headers), stream=True)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()

        return response.status_code, response.headers.get("content-type", ""), chunks()

    return forward


def httpcore_forward(upstream: str) -> Forward:
    import httpcore

    pool = httpcore.AsyncConnectionPool(max_connections=256, max_keepalive_connections=64)

    async def forward(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, AsyncIterator[bytes]]:
        cm = pool.stream("POST", upstream + path, content=body,
                         headers=[(k.encode(), v.encode()) for k, v in headers.items()])
        response = await cm.__aenter__()
        content_type = next((v.decode() for k, v in response.headers if k.lower() == b"content-type"), "")

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_stream():
                    yield chunk
            finally:
                await cm.__aexit__(None, None, None)

        return response.status, content_type, chunks()

    return forward


def aiohttp_forward(upstream: str) -> Forward:
    import aiohttp

    session: list[Any] = []

    async def forward(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, AsyncIterator[bytes]]:
        if not session:
            session.append(aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=60), auto_decompress=False,
            ))
        response = await session[0].post(upstream + path, data=body, headers=headers)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.content.iter_any():
                    yield chunk
            finally:
                response.release()

        return response.status, response.headers.get("content-type", ""), chunks()

    return forward


CLIENTS = {"httpx": httpx_forward, "httpcore": httpcore_forward, "aiohttp": aiohttp_forward}


def build(client: str, upstream: str) -> Starlette:
    forward = CLIENTS[client](upstream.rstrip("/"))

    async def relay(request: Request) -> StreamingResponse:
        body = await request.body()
        status, content_type, chunks = await forward(
            request.url.path, body, {"content-type": request.headers.get("content-type", "application/json")}
        )
        return StreamingResponse(chunks, status_code=status, media_type=content_type or None)

    return Starlette(routes=[Route("/api/generate", relay, methods=["POST"]),
                             Route("/api/chat", relay, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=sorted(CLIENTS), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    config.errorlog = None
    asyncio.run(serve(build(args.client, args.upstream), config))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
