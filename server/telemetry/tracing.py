"""OpenTelemetry tracing, optional: the `otel` extra, on only when the standard variables ask for it
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true`
turns it off again; every other `OTEL_*` variable — service name, headers, sampler — is read by the
SDK itself).

One server span per scheduled request, named by the GenAI semantic conventions
(`{gen_ai.operation.name} {gen_ai.request.model}`), a child client span for the call to Ollama,
and W3C `traceparent` propagated: the client's trace continues through the sidecar into Ollama.
When tracing is off every hook here is a no-op that costs an attribute lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("smart_proxy.tracing")

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROPAGATED = (b"traceparent", b"tracestate")

# gen_ai.operation.name per route (the conventions' names where one fits).
OPERATIONS = {
    "/api/chat": "chat",
    "/v1/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/responses": "chat",
    "/api/generate": "text_completion",
    "/v1/completions": "text_completion",
    "/api/embed": "embeddings",
    "/api/embeddings": "embeddings",
    "/v1/embeddings": "embeddings",
    "/v1/audio/transcriptions": "transcription",
}


class TracingUnavailable(Exception):
    """Tracing was asked for, but the OpenTelemetry packages are not installed."""


def wanted(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARS)


def provider_from_env(env: Mapping[str, str]) -> Any | None:
    """A TracerProvider exporting over OTLP/HTTP as the OTEL_* variables say, or None when they
    ask for no tracing. TracingUnavailable when they do but the `otel` extra is missing."""
    if not wanted(env):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise TracingUnavailable(
            f"{next(v for v in ENDPOINT_VARS if env.get(v, '').strip())} is set, but OpenTelemetry "
            "is not installed: pip install 'ollama-smart-proxy[otel]'"
        ) from None
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "smart-proxy"})
    provider = TracerProvider(resource=resource)
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    endpoint = traces or env["OTEL_EXPORTER_OTLP_ENDPOINT"].strip().rstrip("/") + "/v1/traces"
    # The exporter and the batch processor read the rest of the OTEL_* variables (headers,
    # timeouts, batch sizes) from the process environment themselves; the batch processor
    # exports from its own thread, never on the event loop.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


class RequestSpan:
    """The server span of one request, and what the exchange tells it as the request goes."""

    def __init__(self, tracer: Tracer, span: Any) -> None:
        self._tracer, self._span = tracer, span

    def set(self, **attributes: Any) -> None:
        for key, value in attributes.items():
            if value is not None:
                self._span.set_attribute(key.replace("__", "."), value)

    @contextmanager
    def upstream(self, method: str, url: str, headers: list[tuple[bytes, bytes]]) -> Iterator[None]:
        """The client span around the call to Ollama; its context goes out as `traceparent`
        (replacing the client's, which is this request's parent, not Ollama's)."""
        from opentelemetry import propagate, trace

        context = trace.set_span_in_context(self._span)
        with self._tracer.tracer.start_as_current_span(
            f"{method} {url.split('://', 1)[-1].split('/', 1)[0]}", context=context,
            kind=trace.SpanKind.CLIENT, attributes={"http.request.method": method, "url.full": url},
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            headers[:] = [(k, v) for k, v in headers if k.lower() not in PROPAGATED]
            headers.extend((k.encode(), v.encode("latin-1")) for k, v in carrier.items())
            yield

    def end(self, *, http_status: int | None, error: str | None) -> None:
        from opentelemetry.trace import Status, StatusCode

        if http_status is not None:
            self._span.set_attribute("http.response.status_code", http_status)
        if error is not None or (http_status or 0) >= 500:
            self._span.set_status(Status(StatusCode.ERROR, error or f"HTTP {http_status}"))
            if error is not None:
                self._span.set_attribute("error.type", "smart_proxy.request_failed")
        self._span.end()


class Tracer:
    """Starts request spans when a provider is configured; otherwise `start` returns None."""

    def __init__(self, provider: Any | None) -> None:
        self.provider = provider
        self.tracer: Any = provider.get_tracer("ollama-smart-proxy") if provider is not None else None

    @property
    def on(self) -> bool:
        return self.tracer is not None

    def start(self, endpoint: str, model: str | None, headers: list[tuple[bytes, bytes]]) -> RequestSpan | None:
        if self.tracer is None:
            return None
        from opentelemetry import propagate, trace

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k.lower() in PROPAGATED}
        operation = OPERATIONS.get(endpoint, "chat")
        span = self.tracer.start_span(
            f"{operation} {model}" if model else operation,
            context=propagate.extract(carrier),
            kind=trace.SpanKind.SERVER,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": "ollama",
                "gen_ai.request.model": model or "",
                "http.route": endpoint,
            },
        )
        return RequestSpan(self, span)

    def shutdown(self) -> None:
        if self.provider is not None:
            try:
                self.provider.shutdown()  # flushes what the batch processor holds
            except Exception:  # an exporter failing at exit must not fail the shutdown
                log.exception("tracing: shutdown failed")
