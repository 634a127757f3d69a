"""OpenTelemetry tracing: one server span per scheduled request named by the GenAI conventions,
with the usage, finish reasons and the sidecar's own attributes, a client span for Ollama's part,
and the W3C trace context carried from the client through the sidecar to Ollama. Checked with the
SDK's in-memory exporter, and once with the real OTLP/HTTP exporter against a collector stand-in
on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sidecar_fixtures import make_policy, running_sidecar, wait_until
from test_sidecar_forwarding import Recorder, recorder  # noqa: F401 (a fixture)

from server.telemetry.tracing import Tracer, TracingUnavailable, provider_from_env, wanted

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT}-01"


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(make_policy(), encoding="utf-8")
    return path


def test_a_request_s_trace_runs_from_the_client_through_the_sidecar_to_ollama(
    tmp_path: Path, recorder: tuple[str, Recorder], spans: Any  # noqa: F811
) -> None:
    url, upstream = recorder
    provider, exporter = spans
    with running_sidecar(_policy(tmp_path), url, tracer_provider=provider) as proxy:
        answer = httpx.post(proxy.url + "/api/chat", timeout=10,
                            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                            headers={"traceparent": TRACEPARENT})
        assert answer.status_code == 200
        wait_until(lambda: len(exporter.get_finished_spans()) == 2, within=5, what="two spans")
    client_span, server_span = sorted(exporter.get_finished_spans(), key=lambda s: s.kind != SpanKind.CLIENT)
    assert server_span.kind == SpanKind.SERVER and server_span.name == "chat m:latest"
    assert format(server_span.context.trace_id, "032x") == TRACE_ID
    assert server_span.parent is not None and format(server_span.parent.span_id, "016x") == PARENT
    a = server_span.attributes or {}
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "m:latest"
    assert a["gen_ai.provider.name"] == "ollama" and a["gen_ai.usage.output_tokens"] == 7
    assert a["http.response.status_code"] == 200 and a["smart_proxy.status"] == "completed"
    assert "smart_proxy.queue_wait_ms" in a and "smart_proxy.score" in a and "smart_proxy.policy" in a
    assert client_span.parent is not None and client_span.parent.span_id == server_span.context.span_id
    # Ollama got the client span's context — same trace, the sidecar's span as parent.
    sent = upstream.seen[-1][2]
    forwarded = {k.lower(): v for k, v in sent.items()}["traceparent"]
    assert forwarded == f"00-{TRACE_ID}-{format(client_span.context.span_id, '016x')}-01"


def test_usage_and_finish_reason_from_an_openai_stream(
    tmp_path: Path, ollama_emulator: Any, spans: Any
) -> None:
    provider, exporter = spans
    with running_sidecar(_policy(tmp_path), ollama_emulator.url, tracer_provider=provider) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
            stream=True, stream_options={"include_usage": True},
        )
        chunks = list(stream)
        # Two more models on a card that holds two: the third evicts the first.
        for model in ("llama3.2:3b", "llama3.1:8b"):
            client.chat.completions.create(model=model, max_tokens=2,
                                           messages=[{"role": "user", "content": "hi"}])
        wait_until(lambda: sum(s.kind == SpanKind.SERVER for s in exporter.get_finished_spans()) == 3,
                   within=5, what="three server spans")
    first, _, third = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    a = first.attributes or {}
    assert first.name == "chat llama3.2:1b"
    usage = chunks[-1].usage
    assert usage is not None
    assert a["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert a["gen_ai.usage.input_tokens"] == usage.prompt_tokens > 0
    assert a["gen_ai.response.finish_reasons"] == ("length",)
    assert a["smart_proxy.resident"] is False and a["smart_proxy.action"] == "load"
    assert tuple(a.get("smart_proxy.evicted_models", ())) == ()
    swap = third.attributes or {}
    assert third.name == "chat llama3.1:8b" and swap["smart_proxy.action"] == "swap"
    assert swap["smart_proxy.resident"] is False
    assert tuple(swap["smart_proxy.evicted_models"]) == ("llama3.2:1b",)


def test_off_unless_the_standard_variables_ask() -> None:
    assert not wanted({}) and provider_from_env({}) is None
    assert wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})
    tracer = Tracer(None)
    assert not tracer.on and tracer.start("/api/chat", "m", []) is None


def test_asked_for_without_the_extra_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(TracingUnavailable, match=r"pip install 'ollama-smart-proxy\[otel\]'"):
        provider_from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})


class _Collector(ThreadingHTTPServer):
    daemon_threads = True
    posts: list[tuple[str, str, int]]


class _Receive(BaseHTTPRequestHandler):
    server: _Collector

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.server.posts.append((self.path, self.headers.get("content-type", ""), len(body)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()


def test_the_otlp_exporter_delivers_to_a_collector(tmp_path: Path, ollama_emulator: Any) -> None:
    collector = _Collector(("127.0.0.1", 0), _Receive)
    collector.posts = []
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    try:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}"}
        provider = provider_from_env(env)
        with running_sidecar(_policy(tmp_path), ollama_emulator.url, tracer_provider=provider) as proxy:
            assert httpx.post(proxy.url + "/api/generate", timeout=10,
                              json={"model": "llama3.2:1b", "prompt": "hi", "stream": False}).status_code == 200
        # Stopping the sidecar flushed the batch: the collector has it.
        wait_until(lambda: bool(collector.posts), within=10, what="an export")
        path, content_type, size = collector.posts[0]
        assert path == "/v1/traces" and content_type == "application/x-protobuf" and size > 0
    finally:
        collector.shutdown()
        collector.server_close()
