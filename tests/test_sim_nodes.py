"""`smart-proxy sim --nodes N`: N emulated Ollama servers from one config, each with its own state
(a box with one Ollama per GPU), in a process of its own as an operator would start them."""

from __future__ import annotations

import os
import re
import socket

import httpx
from sidecar_fixtures import cli_process


def test_three_nodes_on_free_ports_each_with_its_own_state() -> None:
    args = ["sim", "--preset", "tiny-8gb", "--time-scale", "0", "--port", "0", "--nodes", "3"]
    with cli_process(args, os.environ) as process:
        assert process.stderr is not None
        banner = process.stderr.readline()
        assert "3 nodes:" in banner and "each" in banner, banner
        urls = re.findall(r"http://127\.0\.0\.1:\d+", banner)
        assert len(set(urls)) == 3, banner
        for url in urls:
            assert httpx.get(url + "/api/version", timeout=10).status_code == 200
        body = {"model": "llama3.2:1b", "prompt": "hi", "stream": False}
        assert httpx.post(urls[0] + "/api/generate", json=body, timeout=30).status_code == 200
        loaded = [[m["name"] for m in httpx.get(u + "/api/ps", timeout=10).json()["models"]] for u in urls]
        assert loaded == [["llama3.2:1b"], [], []]  # a load on one node is that node's alone


def test_a_busy_port_of_a_later_node_is_named_and_nothing_serves() -> None:
    with socket.socket() as first, socket.socket() as busy:
        # Two adjacent ports: the first free (released before the sidecar binds it), the next busy.
        for _ in range(50):
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                busy.bind(("127.0.0.1", port + 1))
                break
            except OSError:
                first.close()
                first = socket.socket()
        busy.listen()
        first.close()
        args = ["sim", "--preset", "tiny-8gb", "--port", str(port), "--nodes", "2"]
        with cli_process(args, os.environ) as process:
            assert process.wait(timeout=60) == 2
            assert process.stderr is not None
            err = process.stderr.read()
    assert err == f"smart-proxy sim: error: cannot listen on 127.0.0.1:{port + 1}: address already in use\n"
