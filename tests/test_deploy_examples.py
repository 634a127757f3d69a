"""The deployment examples say only what is true: every command, flag, environment variable, path
and port they use exists in the CLI, the image and the docs. Plus the ConfigMap case live: the
kubelet updates a mounted ConfigMap by swapping a symlink, and the sidecar must reload on it."""

from __future__ import annotations

import argparse
import os
import re
import shlex
from pathlib import Path
from typing import Any

import httpx
import yaml
from sidecar_fixtures import running_sidecar, wait_until

from server.cli.main import build_parser
from server.settings import ENV_VARS

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = (ROOT / "Containerfile").read_text()
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
K8S = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "smart-proxy.yaml").read_text()) if d]
KUSTOMIZATION = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "kustomization.yaml").read_text())
DEPLOYMENT_DOC = (ROOT / "docs" / "deployment.md").read_text()

# What the image promises (Containerfile): the UID, the port, where policy and state live.
UID = re.search(r"--uid (\d+)", CONTAINERFILE).group(1)  # type: ignore[union-attr]
IMAGE_ENV = dict(re.findall(r"(SMART_PROXY_[A-Z_]+)=(\S+)", CONTAINERFILE))
PORT = IMAGE_ENV["SMART_PROXY_PORT"]
POLICY_DIR = str(Path(IMAGE_ENV["SMART_PROXY_POLICY"]).parent)
STATE_DIR = re.search(r"^VOLUME (\S+)", CONTAINERFILE, re.M).group(1)  # type: ignore[union-attr]


def parses(argv: list[str]) -> None:
    """The sidecar's own parser accepts this command line (as the entry point `smart-proxy`)."""
    build_parser().parse_args(argv)


def known_command(argv: list[str]) -> None:
    """Its verbs and every flag exist (values are not checked: the files are the reader's)."""
    parser = build_parser()
    rest = list(argv)
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        verb = rest.pop(0)
        assert verb in subs[0].choices, f"no verb {verb!r} in {argv}"
        parser = subs[0].choices[verb]
    flags = {o for a in parser._actions for o in a.option_strings}
    for token in rest:
        if token.startswith("-"):
            assert token.split("=", 1)[0] in flags, f"no flag {token!r} in {argv}"


# Variables of the other containers: Ollama's (docs/ollama.md) and the postgres image's.
OTHER_VARIABLES = {"OLLAMA_HOST", "OLLAMA_NUM_PARALLEL", "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_KEEP_ALIVE",
                   "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"}


def known_variable(name: str) -> bool:
    return name in ENV_VARS or name in OTHER_VARIABLES


def test_the_image_defaults_are_real_settings() -> None:
    for name in IMAGE_ENV:
        assert name in ENV_VARS, name
    assert re.search(r'^ENTRYPOINT \["smart-proxy"\]', CONTAINERFILE, re.M)
    parses(["serve"])
    assert f"USER {UID}:{UID}" in CONTAINERFILE and UID != "0"
    assert "HEALTHCHECK" in CONTAINERFILE and "curl" not in CONTAINERFILE.split("HEALTHCHECK", 1)[1]
    assert "/livez" in CONTAINERFILE
    ignore = (ROOT / ".containerignore").read_text()
    assert "\n*\n" in ignore and "**/.env" in ignore  # nothing enters the context unless listed
    # And whatever ignore file a builder reads, only named paths are copied into a layer.
    copied = re.findall(r"^COPY (?!--from)(.+)$", CONTAINERFILE, re.M)
    sources = {src for line in copied for src in line.split()[:-1]}
    assert sources == {"pyproject.toml", "README.md", "LICENSE", "schemas", "policy", "engine",
                       "sim", "server", "policies.example.toml"}, sources


def test_compose_file() -> None:
    services = COMPOSE["services"]
    proxy, postgres = services["smart-proxy"], services["postgres"]
    assert proxy["build"]["dockerfile"] == "Containerfile"
    assert proxy["depends_on"]["postgres"]["condition"] == "service_healthy" and "healthcheck" in postgres
    assert services["ollama"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "ports" not in services["ollama"]  # only the sidecar is published
    assert proxy["ports"] == [f"{PORT}:{PORT}"]
    for service in services.values():
        for name in service.get("environment", {}):
            assert known_variable(name), name
    assert int(proxy["stop_grace_period"].rstrip("s")) > 30  # above the drain
    assert proxy["environment"]["SMART_PROXY_POLICY"] == IMAGE_ENV["SMART_PROXY_POLICY"]
    mounts = {m.split(":")[1]: m for m in proxy["volumes"]}
    assert mounts[POLICY_DIR].endswith(":ro") and STATE_DIR in mounts
    # Secrets come from env files that are not in the repository, one per service; examples are.
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for service, file in ((proxy, "deploy/smart-proxy.env"), (postgres, "deploy/postgres.env")):
        assert service["env_file"] == [file] and file in ignored
        for line in (ROOT / (file + ".example")).read_text().splitlines():
            if line and not line.startswith("#"):
                assert known_variable(line.split("=", 1)[0]), line


def _pod() -> dict[str, Any]:
    deployment = next(d for d in K8S if d["kind"] == "Deployment")
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_kubernetes_pod_is_the_sidecar_pattern() -> None:
    pod = _pod()
    containers = {c["name"]: c for c in pod["containers"]}
    proxy, ollama = containers["smart-proxy"], containers["ollama"]
    parses(proxy["args"])
    env = {e["name"]: e for e in proxy["env"]}
    for name in env:
        assert known_variable(name), name
    assert env["SMART_PROXY_UPSTREAM"]["value"] == "http://127.0.0.1:11434"
    for secret in ("PROXY_ADMIN_KEY", "SMART_PROXY_DB"):
        assert "secretKeyRef" in env[secret]["valueFrom"]
    assert env["SMART_PROXY_POLICY"]["value"] == IMAGE_ENV["SMART_PROXY_POLICY"]
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert proxy["ports"] == [{"name": "http", "containerPort": int(PORT)}]
    ctx = proxy["securityContext"]
    assert ctx["runAsNonRoot"] and str(ctx["runAsUser"]) == UID and ctx["allowPrivilegeEscalation"] is False
    assert proxy["resources"]["requests"] and ollama["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "OLLAMA_HOST", "value": "127.0.0.1:11434"} in ollama["env"]
    for variable in ollama["env"]:
        assert known_variable(variable["name"]), variable
    # Ollama outlives the sidecar's drain: every container of a pod gets SIGTERM at once.
    sleep = int(ollama["lifecycle"]["preStop"]["exec"]["command"][1])
    assert 30 < sleep < pod["terminationGracePeriodSeconds"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["capabilities"] == {"drop": ["ALL"]}
    assert proxy["imagePullPolicy"] == "IfNotPresent"
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    assert "subPath" not in mounts[POLICY_DIR] and mounts[POLICY_DIR]["readOnly"]
    assert STATE_DIR in mounts
    assert pod["terminationGracePeriodSeconds"] > 30  # above --shutdown-grace


def test_kubernetes_service_exposes_only_the_sidecar() -> None:
    service = next(d for d in K8S if d["kind"] == "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    volumes = {v["name"]: v for v in _pod()["volumes"]}
    config_map = volumes["policy"]["configMap"]["name"]
    generated = KUSTOMIZATION["configMapGenerator"][0]
    assert generated["name"] == config_map and generated["files"] == ["policies.toml"]
    assert KUSTOMIZATION["generatorOptions"]["disableNameSuffixHash"] is True  # updated in place
    assert "deploy/kubernetes/policies.toml" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_deployment_doc_commands_exist() -> None:
    """Every `smart-proxy …` line in docs/deployment.md parses; every variable it names exists."""
    lines = [m.group(1) for m in re.finditer(r"^\s*(?:\$ )?smart-proxy (.+?)(?:\s+#.*)?$", DEPLOYMENT_DOC, re.M)]
    assert len(lines) >= 3
    for line in lines:
        known_command(shlex.split(line))
    for name in set(re.findall(r"\b(SMART_PROXY_[A-Z_]+)\b", DEPLOYMENT_DOC)):
        assert name in ENV_VARS, name


def test_a_configmap_update_is_a_symlink_swap_and_reloads(tmp_path: Path, ollama_emulator: Any) -> None:
    """The kubelet's layout: policies.toml -> ..data/policies.toml, ..data -> ..<timestamp>; an
    update writes a new timestamped directory and renames a new ..data symlink over the old one.
    The file the sidecar watches is never written to."""
    mount = tmp_path / "etc-smart-proxy"
    first, second = mount / "..2026_01_01_v1", mount / "..2026_01_01_v2"
    first.mkdir(parents=True)
    example = (ROOT / "policies.example.toml").read_text()
    (first / "policies.toml").write_text(example)
    os.symlink("..2026_01_01_v1", mount / "..data")
    os.symlink("..data/policies.toml", mount / "policies.toml")
    with running_sidecar(mount / "policies.toml", ollama_emulator.url, watch_interval=0.1) as proxy:
        def active() -> str:
            name: str = httpx.get(proxy.url + "/proxy/health", timeout=5).json()["policy"]["name"]
            return name

        assert active() == "balanced"
        second.mkdir()
        (second / "policies.toml").write_text(example.replace('active = "balanced"', 'active = "fair"'))
        os.symlink("..2026_01_01_v2", mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")  # rename(2), atomic
        wait_until(lambda: active() == "fair", within=10, what="the reload after the symlink swap")
