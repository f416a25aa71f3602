#!/usr/bin/env bash
# Build the real Dockerfile with podman where no container registry can be reached (only
# Debian's and PyPI's package mirrors), run the image and check it from outside.
#
#   deploy/container/build-offline.sh [gateway|embedded]      (as root; default: gateway)
#
# The base image (python:3.11-slim-bookworm) cannot be pulled, so a stand-in is made from
# Debian packages with debootstrap: Debian 12 with its python3.11, linked into /usr/local/bin
# as in the official image, under the same name. The host's own CA certificates
# (/usr/local/share/ca-certificates, e.g. a TLS-inspecting proxy's) are added to it so pip
# inside the build trusts the same servers as pip outside. Everything else is the real
# Dockerfile, built offline (--pull=never) and run:
#   - GET /health is 200 from the host, a request without a key is refused (401), and
#     `podman healthcheck run` (the image's own HEALTHCHECK) says healthy;
#   - the process runs as uid 10001, with no compiler in the image;
#   - the gateway image runs the compiled request path (`bastion --version`);
#   - SIGTERM (podman stop) ends it with status 0 after draining.
# Podman keeps its images under $BASTION_PODMAN_ROOT (default /var/tmp/bastion-podman), apart
# from any other podman use on the machine; a second run reuses the stand-in and the layers.
# BASTION_PODMAN_DRIVER=vfs where the kernel has no overlayfs (much slower).
set -euo pipefail
cd "$(dirname "$0")/../.."

target=${1:-gateway}
case $target in gateway | embedded) ;; *) echo "usage: $0 [gateway|embedded]" >&2; exit 2 ;; esac
base=docker.io/library/python:3.11-slim-bookworm
image=localhost/bastion:offline-$target
root=${BASTION_PODMAN_ROOT:-/var/tmp/bastion-podman}
podman=(podman --root "$root/storage" --runroot "$root/run"
        --storage-driver "${BASTION_PODMAN_DRIVER:-overlay}")
export CONTAINERS_REGISTRIES_CONF=$root/registries.conf   # short names resolve to docker.io
export CONTAINERS_CONF=$root/containers.conf

say() { printf '== %s\n' "$*"; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

need=()
for tool in podman:podman debootstrap:debootstrap runc:runc; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${need[@]}" uidmap slirp4netns >/dev/null
fi
mkdir -p "$root"
printf 'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n' \
  >"$CONTAINERS_REGISTRIES_CONF"
# runc, not crun: crun refuses a host with cgroups v1 and v2 mounted side by side ("hybrid").
# Podman's default limits (1048576 open files) exceed what a sandboxed host may set:
# containers get the host's own limit of open files and 4096 processes.
cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF

# ---- the stand-in base image ----------------------------------------------------------------
if ! "${podman[@]}" image exists "$base"; then
  started=$(date +%s)
  say "making a stand-in for $base from Debian packages"
  rootfs=$(mktemp -d /var/tmp/bastion-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase \
    --include=python3.11,python3.11-venv,python3-distutils,python3-lib2to3,python3-pip-whl,python3-setuptools-whl,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >"$root/debootstrap.log" 2>&1 \
    || { tail -20 "$root/debootstrap.log" >&2; exit 1; }
  for name in python3.11 python3 python; do ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/$name"; done
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
  fi
  # As Debian's official images: apt keeps no package caches in image layers.
  printf '%s\n' 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
    'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' >"$rootfs/etc/apt/apt.conf.d/docker-clean"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/debootstrap
  tar -C "$rootfs" -c . | "${podman[@]}" import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' - "$base" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  say "stand-in ready in $(elapsed "$started")"
fi

# ---- build ----------------------------------------------------------------------------------
started=$(date +%s)
say "podman build --target $target"
"${podman[@]}" build --pull=never --format docker --network host --target "$target" \
  --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096 \
  -t "$image" . >"$root/build-$target.log" 2>&1 || { tail -40 "$root/build-$target.log" >&2; exit 1; }
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$image")
say "built $image in $(elapsed "$started"), $((size / 1000000)) MB"

# ---- run and check ----------------------------------------------------------------------------
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
name=bastion-offline-$$
cleanup() { "${podman[@]}" rm -f -t 0 "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# The gateway image refuses to start without a model: name one whose server is absent (the
# gateway serves /health all the same; the embedded image serves its own).
config=$root/smoke-$target.yaml
if [ "$target" = gateway ]; then
  printf '%s\n' 'server: {host: 0.0.0.0, port: 8080, state_dir: /var/lib/bastion}' \
    'models: [{name: absent, upstreams: [{url: "http://127.0.0.1:9"}]}]' 'logging: {format: json}' >"$config"
else
  "${podman[@]}" run --rm --entrypoint cat "$image" /etc/bastion/bastion.yaml >"$config" 2>/dev/null
fi
say "podman run on port $port"
"${podman[@]}" run -d --name "$name" --network host --read-only --tmpfs /tmp \
  --cap-drop ALL --security-opt no-new-privileges -v "$config:/etc/bastion/bastion.yaml:ro" \
  -e BASTION_SERVER__PORT="$port" -e HEALTHCHECK_URL="http://127.0.0.1:$port/health" \
  "$image" --config /etc/bastion/bastion.yaml --port "$port" >/dev/null 2>"$root/run-stderr.log" \
  || { cat "$root/run-stderr.log" >&2; exit 1; }   # (podman's complaints about systemd timers go there)

started=$(date +%s)
deadline=$((started + ${BASTION_READY_TIMEOUT:-180}))
until python3 -c "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:$port/health', timeout=2).status != 200)" 2>/dev/null; do
  if [ "$("${podman[@]}" inspect --format '{{.State.Running}}' "$name")" != true ] || [ "$(date +%s)" -gt "$deadline" ]; then
    "${podman[@]}" logs "$name" 2>&1 | tail -30 >&2
    echo "FAIL: /health did not answer 200" >&2
    exit 1
  fi
  sleep 0.5
done
say "GET /health: 200 after $(elapsed "$started")"

# A request without a key: the whole pipeline runs and refuses it, in OpenAI's error shape.
python3 - "$port" <<'EOF' || { echo "FAIL: a request without a key was not refused with 401" >&2; exit 1; }
import json, sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/models", timeout=5)
except urllib.error.HTTPError as exc:
    body = json.loads(exc.read())
    sys.exit(0 if exc.code == 401 and body["error"]["type"] else 1)
sys.exit(1)
EOF
say "GET /v1/models without a key: 401"

"${podman[@]}" healthcheck run "$name" || { echo "FAIL: the image's HEALTHCHECK says unhealthy" >&2; exit 1; }
say "HEALTHCHECK: healthy"

uid=$("${podman[@]}" exec "$name" id -u)
[ "$uid" = 10001 ] || { echo "FAIL: runs as uid $uid, not 10001" >&2; exit 1; }
if "${podman[@]}" exec "$name" sh -c 'command -v gcc || command -v cc || command -v cmake' >/dev/null; then
  echo "FAIL: a compiler is in the image" >&2
  exit 1
fi
say "runs as uid 10001; no compiler in the image"

# The gateway image runs the request path compiled (the Dockerfile's compile stage); the
# embedded demo image runs the sources.
build=$("${podman[@]}" exec "$name" bastion --version)
if [ "$target" = gateway ] && [[ $build != *"compiled (mypyc"* ]]; then
  echo "FAIL: the gateway image does not run the compiled build: $build" >&2
  exit 1
fi
say "build: $build"

started=$(date +%s)
"${podman[@]}" stop -t 60 "$name" >/dev/null 2>>"$root/run-stderr.log"
status=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$name")
"${podman[@]}" logs "$name" >"$root/run-$target.log" 2>&1
[ "$status" = 0 ] || { tail -20 "$root/run-$target.log" >&2; echo "FAIL: exit status $status after SIGTERM" >&2; exit 1; }
say "SIGTERM: exit status 0 after $(elapsed "$started")"
# Layers of earlier builds that no tag uses any more: dropped after a day, so repeated runs
# keep the cache of the latest one without filling the disk.
"${podman[@]}" image prune -f --filter until=24h >/dev/null 2>&1 || true
say "OK $image ($((size / 1000000)) MB); logs in $root"
