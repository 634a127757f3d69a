#!/usr/bin/env bash
# Build the image from this checkout and run it for real, with podman, on a Debian base made
# locally (no registry needed): the emulator in one container, the sidecar in another (both from
# the image, on the host network), then
#   /proxy/health answers · a chat goes through · a ConfigMap-style policy update (a symlink swap
#   of the directory, as Kubernetes does it) is hot-reloaded · `podman healthcheck run` passes ·
#   SIGTERM ends the sidecar with exit code 0 after its drain.
# Everything it made is removed at the end, whatever happened — except the Debian base image and
# its tarball, kept on purpose so the next run skips the debootstrap. Needs root, podman, debootstrap and
# runc (.ci/run installs them). docs/deployment.md says why each option is there.
#
#   scripts/container-smoke.sh            # SMOKE_CACHE=/var/cache/smart-proxy-smoke keeps the base
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${SMOKE_CACHE:-/var/cache/smart-proxy-smoke}
MIRROR=${SMOKE_MIRROR:-http://deb.debian.org/debian}
BASE=localhost/debian-py:bookworm
NAME=smart-proxy-smoke-$$
IMAGE=localhost/smart-proxy:smoke-$$  # per run: concurrent runs on one storage never collide
CA=/etc/ssl/certs/ca-certificates.crt
# vfs: no overlay support needed; runc: crun fails on this kind of host's cgroups; explicit
# ulimits: the defaults podman would copy are not valid here.
PODMAN=(podman --storage-driver=vfs)
RUN=(--runtime=runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 --network host)

started=$(date +%s)
step() { printf '[%4ds] %s\n' "$(($(date +%s) - started))" "$*"; }
fail() {
    echo "container smoke test FAILED: $*" >&2
    for c in "$NAME-ollama" "$NAME-proxy"; do  # their logs, before the cleanup removes them
        if "${PODMAN[@]}" container exists "$c" 2> /dev/null; then
            echo "--- podman logs $c (last 30 lines)" >&2
            "${PODMAN[@]}" logs --tail 30 "$c" >&2 2>&1 || true
        fi
    done
    exit 1
}

[ "$(id -u)" = 0 ] || fail "run it as root (rootful podman, debootstrap)"
for tool in podman debootstrap runc python3; do
    command -v "$tool" > /dev/null || fail "$tool is not installed"
done

work=$(mktemp -d)
cleanup() {
    "${PODMAN[@]}" rm -f -t 0 "$NAME-ollama" "$NAME-proxy" > /dev/null 2>&1 || true
    "${PODMAN[@]}" rmi "$IMAGE" > /dev/null 2>&1 || true
    # The build stage's image, untagged, labelled with this run's name (--label below).
    "${PODMAN[@]}" images --quiet --filter "label=smart-proxy-smoke=$NAME" \
        | xargs -r "${PODMAN[@]}" rmi > /dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http() {  # METHOD URL [JSON BODY] -> prints the body; fails on a non-2xx answer
    python3 - "$@" <<'PY'
import sys, urllib.request
method, url = sys.argv[1], sys.argv[2]
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
with opener.open(request, timeout=30) as answer:
    print(answer.read().decode())
PY
}
wait_for() {  # SECONDS DESCRIPTION COMMAND...
    local deadline=$(($(date +%s) + $1)) what=$2
    shift 2
    until "$@" > /dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "$what: not within the time allowed"
        sleep 0.5
    done
}

# -- 1. a Debian bookworm base with Python, made here, cached between runs ----------------------
if "${PODMAN[@]}" image exists "$BASE"; then
    step "base image $BASE is there"
else
    mkdir -p "$CACHE"
    if [ ! -s "$CACHE/debian-py-bookworm.tar" ]; then
        step "debootstrap bookworm from $MIRROR"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$work/rootfs" "$MIRROR" > "$work/debootstrap.log" 2>&1 \
            || { tail -20 "$work/debootstrap.log"; fail "debootstrap"; }
        tar -C "$work/rootfs" -c . > "$CACHE/debian-py-bookworm.tar.part"
        mv "$CACHE/debian-py-bookworm.tar.part" "$CACHE/debian-py-bookworm.tar"
        rm -rf "$work/rootfs"
    fi
    step "importing the base as $BASE"
    "${PODMAN[@]}" import "$CACHE/debian-py-bookworm.tar" "$BASE" > "$work/import.log" 2>&1 \
        || { cat "$work/import.log"; fail "podman import"; }
fi

# -- 2. the image, from this checkout -----------------------------------------------------------
# --format docker keeps HEALTHCHECK (OCI images have none); the host's CA bundle is mounted for
# HTTPS from the build, which may go through a proxy only the host trusts.
step "building $IMAGE"
"${PODMAN[@]}" build --format docker --isolation=chroot --build-arg "BASE=$BASE" \
    --build-arg "PIP_CERT=$CA" -v "$CA:$CA:ro" --label "smart-proxy-smoke=$NAME" \
    -t "$IMAGE" -f Containerfile . > "$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log"; fail "podman build"; }

# -- 3. the emulator and the sidecar --------------------------------------------------------------
ollama_port=$(free_port)
proxy_port=$(free_port)
step "emulator on :$ollama_port"
# podman's own complaints about systemd health-check timers (none on this host) are noise here;
# the health check is run by hand below.
"${PODMAN[@]}" run -d --name "$NAME-ollama" "${RUN[@]}" "$IMAGE" \
    sim --host 127.0.0.1 --port "$ollama_port" --preset tiny-8gb --time-scale 0.01 > /dev/null \
    2> >(grep -v "systemd" >&2) || fail "podman run (emulator)"
wait_for 60 "the emulator" http GET "http://127.0.0.1:$ollama_port/api/tags"

# The policy directory as Kubernetes lays out a mounted ConfigMap: the file is a symlink into
# `..data`, itself a symlink to a timestamped directory; an update swaps `..data` in one rename.
policy=$work/policy
mkdir -p "$policy/..2026_01_01_v1" "$work/state"
cp policies.example.toml "$policy/..2026_01_01_v1/policies.toml"
ln -s ..2026_01_01_v1 "$policy/..data"
ln -s ..data/policies.toml "$policy/policies.toml"
chown 10001:10001 "$work/state"  # the image's fixed UID owns its volume

step "sidecar on :$proxy_port"
"${PODMAN[@]}" run -d --name "$NAME-proxy" "${RUN[@]}" \
    -v "$policy:/etc/smart-proxy:ro" -v "$work/state:/var/lib/smart-proxy" \
    -e SMART_PROXY_HOST=127.0.0.1 -e SMART_PROXY_PORT="$proxy_port" \
    -e SMART_PROXY_UPSTREAM="http://127.0.0.1:$ollama_port" \
    "$IMAGE" > /dev/null 2> >(grep -v "systemd" >&2) || fail "podman run (sidecar)"
proxy=http://127.0.0.1:$proxy_port
# "ok" needs the first poll of the emulator to have succeeded, not only the port to answer.
healthy() { http GET "$proxy/proxy/health" | python3 -c 'import json, sys; h = json.load(sys.stdin); sys.exit(not (h["status"] == "ok" and h["upstream"]["up"]))'; }
wait_for 60 "the sidecar's health (ok, upstream up)" healthy
step "health ok: $(http GET "$proxy/proxy/health")"

# -- 4. a chat through it ---------------------------------------------------------------------------
answer=$(http POST "$proxy/api/chat" '{"model": "llama3.2:1b", "stream": false, "messages": [{"role": "user", "content": "hello"}]}')
echo "$answer" | python3 -c 'import json, sys; a = json.load(sys.stdin); assert a["done"] and a["message"]["content"], a' \
    || fail "no chat answer: $answer"
step "chat answered"

# -- 5. a ConfigMap update, hot-reloaded ----------------------------------------------------------
mkdir "$policy/..2026_01_01_v2"
sed 's/^active = "balanced"/active = "fair"/' "$policy/..2026_01_01_v1/policies.toml" > "$policy/..2026_01_01_v2/policies.toml"
ln -s ..2026_01_01_v2 "$policy/..data_tmp"
mv -T "$policy/..data_tmp" "$policy/..data"  # rename(2): atomic, as the kubelet does it
active() { http GET "$proxy/proxy/health" | python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["policy"]["name"] != "fair")'; }
wait_for 15 "the reload after the ConfigMap swap" active
step "policy reloaded after the symlink swap (active: fair)"

# -- 6. the image's HEALTHCHECK ---------------------------------------------------------------------
"${PODMAN[@]}" healthcheck run "$NAME-proxy" 2> /dev/null || fail "podman healthcheck run"
step "podman healthcheck run: healthy"

# -- 7. SIGTERM: drain and exit 0 ------------------------------------------------------------------
"${PODMAN[@]}" stop --time 30 "$NAME-proxy" > /dev/null 2> >(grep -v "systemd" >&2)
code=$("${PODMAN[@]}" inspect "$NAME-proxy" --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || { "${PODMAN[@]}" logs "$NAME-proxy" 2>&1 | tail -20; fail "exit code $code after SIGTERM"; }
# The sidecar logs to stderr, which `podman logs` gives back on its own stderr. Read them whole
# first: `grep -q` leaving early would SIGPIPE podman under pipefail.
logs=$("${PODMAN[@]}" logs "$NAME-proxy" 2>&1)
grep -q "shutting down" <<< "$logs" || fail "no drain in the logs"
step "SIGTERM: drained, exit code 0"

step "container smoke test passed in $(($(date +%s) - started)) s"
