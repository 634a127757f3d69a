"""The Inference Extension example (deploy/kubernetes/inference-pool/) says only what is true:
the sidecar's command line, variables, port and probes exist; the InferencePool selects the pods
on the sidecar's port; the endpoint picker (EPP) is wired to the pool, and every metric flag it
gets names a metric the sidecar exports; the HTTPRoute leads to the pool."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from test_deploy_examples import OTHER_VARIABLES, known_command

from server.admin import routes as admin_routes
from server.cli.main import build_parser
from server.proxy import routes as proxy_routes
from server.settings import ENV_VARS
from server.telemetry import model_server_protocol as msp

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "kubernetes" / "inference-pool"
CONTAINERFILE = (ROOT / "Containerfile").read_text()
IMAGE_PORT = int(re.search(r"SMART_PROXY_PORT=(\d+)", CONTAINERFILE).group(1))  # type: ignore[union-attr]
IMAGE_POLICY = re.search(r"SMART_PROXY_POLICY=(\S+)", CONTAINERFILE).group(1)  # type: ignore[union-attr]

SINGLE_POD = [d for d in yaml.safe_load_all((EXAMPLE.parent / "smart-proxy.yaml").read_text()) if d]
KUSTOMIZATION: dict[str, Any] = yaml.safe_load((EXAMPLE / "kustomization.yaml").read_text())
# Every document of every manifest, with the file it came from.
DOCS: list[tuple[str, dict[str, Any]]] = [
    (path.name, doc)
    for path in sorted(EXAMPLE.glob("*.yaml"))
    if path.name != "kustomization.yaml"
    for doc in yaml.safe_load_all(path.read_text())
    if doc
]

# The EPP's metric flags and what the sidecar exports for each (server/telemetry/
# model_server_protocol.py): the protocol's field, by the flag that names its metric.
METRIC_FLAGS = {
    "--total-queued-requests-metric": msp.QUEUED,
    "--total-running-requests-metric": msp.RUNNING,
    "--kv-cache-usage-percentage-metric": msp.CACHE,
    "--lora-info-metric": msp.ADAPTERS,
}
EPP_DEFAULT_GRPC_PORT = 9002  # the EPP's --grpc-port default
SIDECAR_PATHS = {
    r.path for r in proxy_routes.routes() + admin_routes.routes() if hasattr(r, "path")
}


def one(kind: str, api_version: str | None = None) -> dict[str, Any]:
    found = [d for _, d in DOCS if d["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind} in {EXAMPLE}, found {len(found)}"
    if api_version is not None:
        assert found[0]["apiVersion"] == api_version, f"{kind} must be {api_version}"
    return found[0]


def of_file(name: str, kind: str) -> dict[str, Any]:
    found = [d for file, d in DOCS if file == name and d["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind} in {name}, found {len(found)}"
    return found[0]


def containers(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def pool_workload() -> dict[str, Any]:
    return of_file("pool.yaml", "StatefulSet")


def sidecar() -> dict[str, Any]:
    return containers(pool_workload())["smart-proxy"]


def epp_container() -> dict[str, Any]:
    return containers(of_file("epp.yaml", "Deployment"))["epp"]


def flags(args: list[str]) -> dict[str, str]:
    """`--name=value` and `--name value` alike (the EPP's pflag takes both); a flag with no value
    (followed by another flag) maps to "true"."""
    found: dict[str, str] = {}
    i = 0
    while i < len(args):
        token = args[i]
        assert token.startswith("-"), f"EPP argument {token!r} follows no flag"
        if "=" in token:
            name, value = token.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("-"):
            name, value = token, args[i + 1]
            i += 1
        else:
            name, value = token, "true"
        assert name not in found, f"EPP flag {name} given twice"
        found[name] = value
        i += 1
    return found


def epp_flags() -> dict[str, str]:
    return flags(epp_container()["args"])


def port_number(container: dict[str, Any], port: int | str) -> int:
    """A Service's or probe's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in named, f"container {container['name']} has no port named {port!r}"
    return int(named[port])


def test_the_kustomization_lists_exactly_the_files_present() -> None:
    resources = KUSTOMIZATION["resources"]
    present = sorted(p.name for p in EXAMPLE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert len(resources) == len(set(resources)), f"a resource is listed twice: {resources}"
    assert sorted(resources) == present, (
        f"kustomization.yaml lists {sorted(resources)}, the directory holds {present}"
    )
    others = sorted(
        p.name for p in EXAMPLE.iterdir() if p.suffix != ".yaml" and p.name != "policies.toml"
    )
    assert others == [], f"files in {EXAMPLE} that no manifest uses: {others}"
    # The policy ConfigMap the pods mount is the one generated from the user's policies.toml,
    # under a name of its own (the single-pod example's must not be overwritten).
    generated = KUSTOMIZATION["configMapGenerator"]
    volumes = {v["name"]: v for v in pool_workload()["spec"]["template"]["spec"]["volumes"]}
    config_map = volumes["policy"]["configMap"]["name"]
    assert [g["name"] for g in generated] == [config_map], (
        f"the pods mount ConfigMap {config_map!r}, the kustomization generates {generated}"
    )
    assert generated[0]["files"] == ["policies.toml"]
    single = yaml.safe_load((EXAMPLE.parent / "kustomization.yaml").read_text())
    assert config_map not in {g["name"] for g in single["configMapGenerator"]}, (
        f"ConfigMap {config_map!r} is also the single-pod example's"
    )
    assert KUSTOMIZATION["generatorOptions"]["disableNameSuffixHash"] is True, (
        "the policy ConfigMap must keep its name, so an edit is a hot reload, not a rollout"
    )


def test_the_sidecar_command_line_and_environment_exist() -> None:
    proxy = sidecar()
    known_command(proxy["args"])
    build_parser().parse_args(proxy["args"])  # raises SystemExit on a bad command line
    env = {e["name"]: e for e in proxy["env"]}
    unknown = sorted(set(env) - set(ENV_VARS))
    assert not unknown, (
        f"the smart-proxy container sets variables the sidecar never reads: {unknown}"
    )
    instance = env.get("SMART_PROXY_INSTANCE", {}).get("valueFrom", {})
    assert instance == {"fieldRef": {"fieldPath": "metadata.name"}}, (
        "SMART_PROXY_INSTANCE must be the pod's name (downward API, metadata.name): "
        f"the sidecar's name on the records of the shared journal; got {instance}"
    )
    for secret in ("PROXY_ADMIN_KEY", "SMART_PROXY_DB"):
        ref = env[secret]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "smart-proxy-secrets", "key": secret}, f"{secret} from {ref}"
    assert env["SMART_PROXY_UPSTREAM"]["value"] == "http://127.0.0.1:11434", (
        "the sidecar reaches Ollama on the pod's loopback"
    )
    assert env["SMART_PROXY_POLICY"]["value"] == IMAGE_POLICY
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    policy_dir = str(Path(IMAGE_POLICY).parent)
    assert "subPath" not in mounts[policy_dir] and mounts[policy_dir]["readOnly"], (
        "mount the policy ConfigMap as a whole directory: a subPath never sees an update"
    )
    ctx = proxy["securityContext"]
    hardened = {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
    }
    assert {k: ctx.get(k) for k in hardened} == hardened, f"the sidecar runs as in the image: {ctx}"


def test_ollama_is_reachable_only_by_the_sidecar() -> None:
    ollama = containers(pool_workload())["ollama"]
    env = {e["name"]: e.get("value") for e in ollama["env"]}
    assert env.get("OLLAMA_HOST") == "127.0.0.1:11434", (
        f"Ollama must listen on the pod's loopback only, got OLLAMA_HOST={env.get('OLLAMA_HOST')!r}"
    )
    unknown = sorted(set(env) - OTHER_VARIABLES)
    assert not unknown, f"the ollama container sets variables not known to Ollama's docs: {unknown}"
    assert "ports" not in ollama, "Ollama must publish no port: only the sidecar's is reachable"
    assert ollama["resources"]["limits"]["nvidia.com/gpu"] == 1, "one GPU per pod"
    mounts = {m["name"] for m in ollama["volumeMounts"]}
    claims = {
        c["metadata"]["name"] for c in pool_workload()["spec"].get("volumeClaimTemplates", [])
    }
    assert "models" in mounts and "models" in claims, "each pod keeps its models on its own claim"
    # Ollama outlives the sidecar's drain: every container of a pod gets SIGTERM at once.
    pod = pool_workload()["spec"]["template"]["spec"]
    grace = float(build_parser().parse_args(sidecar()["args"]).shutdown_grace)
    sleep = int(ollama["lifecycle"]["preStop"]["exec"]["command"][1])
    assert grace < sleep < pod["terminationGracePeriodSeconds"], (
        f"need drain ({grace}) < Ollama's preStop sleep ({sleep}) < the pod's grace period"
    )


def test_the_pool_has_several_replicas_and_probes_that_exist() -> None:
    workload = pool_workload()
    assert workload["spec"]["replicas"] >= 2, "a pool of one pod needs no endpoint picker"
    proxy = sidecar()
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        get = proxy[probe]["httpGet"]
        assert get["path"] == path, f"{probe} must be {path}, is {get['path']}"
        assert get["path"] in SIDECAR_PATHS, f"the sidecar has no route {get['path']}"
        assert port_number(proxy, get["port"]) == IMAGE_PORT, (
            f"{probe} is not on the sidecar's port"
        )
    assert "/metrics" in SIDECAR_PATHS, "the EPP scrapes /metrics on the sidecar's port"
    labels = workload["spec"]["template"]["metadata"]["labels"]
    selector = workload["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items(), "the StatefulSet must select its own pods"


def test_the_inference_pool_selects_the_sidecars() -> None:
    pool = one("InferencePool", "inference.networking.k8s.io/v1")
    labels = pool_workload()["spec"]["template"]["metadata"]["labels"]
    match = pool["spec"]["selector"]["matchLabels"]
    assert match and match.items() <= labels.items(), (
        f"InferencePool selector {match} is not a subset of the pod labels {labels}"
    )
    # The single-pod example may run in the same namespace: neither may select the other's pods.
    for doc in SINGLE_POD:
        if doc["kind"] == "Deployment":
            other = doc["spec"]["template"]["metadata"]["labels"]
            assert not match.items() <= other.items(), (
                "the pool would select the single-pod example"
            )
        if doc["kind"] == "Service":
            assert not doc["spec"]["selector"].items() <= labels.items(), (
                f"the single-pod example's Service {doc['metadata']['name']!r} would select the pool's pods"
            )
    ports = [p["number"] for p in pool["spec"]["targetPorts"]]
    sidecar_ports = [p["containerPort"] for p in sidecar()["ports"]]
    assert ports == sidecar_ports == [IMAGE_PORT], (
        f"targetPorts {ports} must be the smart-proxy container's port {sidecar_ports}, "
        f"the image's SMART_PROXY_PORT={IMAGE_PORT}"
    )


def test_the_endpoint_picker_serves_the_pool() -> None:
    pool = one("InferencePool")
    ref = pool["spec"]["endpointPickerRef"]
    assert ref.get("kind", "Service") == "Service" and ref.get("group", "") == "", ref
    service = of_file("epp.yaml", "Service")
    assert ref["name"] == service["metadata"]["name"], (
        f"endpointPickerRef names {ref['name']!r}, the EPP's Service is {service['metadata']['name']!r}"
    )
    args = epp_flags()
    grpc_port = int(args.get("--grpc-port", EPP_DEFAULT_GRPC_PORT))
    service_ports = {p["port"]: p for p in service["spec"]["ports"]}
    assert ref["port"]["number"] in service_ports, (
        f"endpointPickerRef port {ref['port']['number']} is not a port of the Service"
    )
    target = service_ports[ref["port"]["number"]].get("targetPort", ref["port"]["number"])
    assert ref["port"]["number"] == grpc_port == port_number(epp_container(), target), (
        f"endpointPickerRef port {ref['port']['number']}, the EPP's --grpc-port {grpc_port} and "
        f"the Service's target {target} must be one port"
    )
    deployment = of_file("epp.yaml", "Deployment")
    epp_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= epp_labels.items(), (
        "the Service must select the EPP"
    )
    assert args.get("--pool-name") == pool["metadata"]["name"], (
        f"EPP --pool-name {args.get('--pool-name')!r} is not the InferencePool {pool['metadata']['name']!r}"
    )
    assert "--pool-namespace" in args, "give the EPP the pool's namespace"
    assert args.get("--pool-group", "inference.networking.k8s.io") == "inference.networking.k8s.io"
    assert args.get("--model-server-metrics-path", "/metrics") == "/metrics"
    image, _, tag = epp_container()["image"].rpartition(":")
    assert image == "registry.k8s.io/gateway-api-inference-extension/epp", image
    # v1.3 is the first release with --total-running-requests-metric and the last that accepts
    # the metric flags (v1.4 refuses them: the names moved to its configuration file).
    assert re.fullmatch(r"v1\.3\.\d+", tag), f"EPP image tag {tag!r}: pin a v1.3.x release"


def test_every_epp_metric_flag_names_a_metric_the_sidecar_exports() -> None:
    args = epp_flags()
    for flag, exported in METRIC_FLAGS.items():
        assert flag in args, f"set {flag} explicitly (the sidecar exports {exported})"
        assert args[flag] in msp.NAMES, (
            f"EPP {flag}={args[flag]!r} names no metric the sidecar exports {msp.NAMES}"
        )
        assert args[flag] == exported, (
            f"EPP {flag}={args[flag]!r}, the sidecar exports {exported!r}"
        )
    for flag, value in args.items():
        if flag.endswith("-metric") and flag not in METRIC_FLAGS:
            assert value == "" or value in msp.NAMES, (
                f"EPP {flag}={value!r} names no metric the sidecar exports; empty disables it"
            )
    assert args.get("--cache-info-metric") == "", (
        "disable --cache-info-metric (empty): the sidecar exports no prompt-cache blocks"
    )
    config = yaml.safe_load(args["--config-text"])
    types = {p["type"] for p in config["plugins"]}
    assert "lora-affinity-scorer" in types, "without it the EPP ignores which models are loaded"
    assert "prefix-cache-scorer" not in types, (
        "Ollama shares no prompt-cache blocks between requests"
    )
    profile = config["schedulingProfiles"][0]["plugins"]
    assert {p["pluginRef"] for p in profile} <= types | {p.get("name") for p in config["plugins"]}


def test_the_epp_may_read_the_pool_and_its_pods() -> None:
    deployment = of_file("epp.yaml", "Deployment")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert of_file("epp.yaml", "ServiceAccount")["metadata"]["name"] == account
    binding = of_file("epp.yaml", "RoleBinding")
    role = of_file("epp.yaml", "Role")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert {"kind": "ServiceAccount", "name": account} in binding["subjects"]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for group, resource in (("", "pods"), ("inference.networking.k8s.io", "inferencepools")):
        for verb in ("get", "list", "watch"):
            assert (group, resource, verb) in granted, f"the EPP may not {verb} {resource}"
    assert all(verb in {"get", "list", "watch"} for *_, verb in granted), "the EPP only reads"


def test_the_route_leads_to_the_pool() -> None:
    pool = one("InferencePool")
    route = one("HTTPRoute", "gateway.networking.k8s.io/v1")
    refs = [ref for rule in route["spec"]["rules"] for ref in rule["backendRefs"]]
    assert refs, "the HTTPRoute has no backendRef"
    for ref in refs:
        got = (ref.get("group"), ref.get("kind"), ref.get("name"))
        want = ("inference.networking.k8s.io", "InferencePool", pool["metadata"]["name"])
        assert got == want, f"backendRef {got} must be the InferencePool {want}"
        if "port" in ref:
            assert ref["port"] == pool["spec"]["targetPorts"][0]["number"], (
                f"backendRef port {ref['port']} is not the pool's target port"
            )
    paths = [m["path"]["value"] for rule in route["spec"]["rules"] for m in rule["matches"]]
    for path in paths:
        assert path in SIDECAR_PATHS, (
            f"the route sends {path} to the pool; the sidecar has no such route"
        )


def test_the_doc_names_only_what_exists() -> None:
    doc = (ROOT / "docs" / "inference-pool.md").read_text()
    for name in set(re.findall(r"\bvllm:[a-z_]+", doc)):
        assert name in msp.NAMES, (
            f"docs/inference-pool.md names {name}, which the sidecar does not export"
        )
    for name in set(re.findall(r"\b(SMART_PROXY_[A-Z_]+)\b", doc)):
        assert name in ENV_VARS, (
            f"docs/inference-pool.md names {name}, which the sidecar does not read"
        )
    for target in re.findall(r"kubectl apply -k (\S+)", doc):
        assert (ROOT / target / "kustomization.yaml").is_file(), f"no kustomization in {target}"
    for flag in set(re.findall(r"`(--[a-z-]+-metric)", doc)):
        assert flag in epp_flags(), (
            f"docs/inference-pool.md names {flag}, which epp.yaml does not set"
        )
