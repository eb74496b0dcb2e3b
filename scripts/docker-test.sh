#!/usr/bin/env bash
# make docker-test: build the Dockerfile unchanged with podman, run the image on loopback, wait
# for /_stcore/health, open the dashboard in headless chromium until the first plotly chart
# (the two-time heatmap) shows (reloading only after podman's network change lost requests),
# screenshot it, check the volume and user behaviour, record the image size and cold start
# in bench/results/docker.json, and remove the container it started.
#
#   scripts/docker-test.sh [--clean] [--port N] [--image NAME]
#     --clean   also remove the image and its dangling build layers afterwards (default: keep
#               them, so the next run rebuilds only what changed)
#
# Needs podman (installed by ../shared/tools/container-base.sh when missing, as root), the
# project venv with Playwright (make venv) and /usr/bin/chromium. Where /opt/wheels holds the
# pinned CPU torch wheel, the build installs it from there instead of from the network;
# elsewhere it uses the Dockerfile's default index (PyTorch's CPU wheels). Set
# COHERENCE_TORCH_THREADS=1 on a machine shared with other jobs (the demo trains in the build).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
SHARED_TOOLS="${COHERENCE_SHARED_TOOLS:-$REPO/../shared/tools}"
PY="${PYTHON:-$REPO/.venv/bin/python}"
IMAGE="coherence-explorer:latest"
PORT=""
CLEAN=0
HEALTH_TIMEOUT=180 # s from `podman run` to a healthy server
CHART_TIMEOUT=180  # s from the first page load to a visible plotly chart
ARTIFACTS="$REPO/test-artifacts"
CONTAINER="coherence-docker-test-$$"

while [ $# -gt 0 ]; do
  case "$1" in
    --clean) CLEAN=1 ;;
    --port) PORT="$2"; shift ;;
    --image) IMAGE="$2"; shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "docker-test: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '\033[1m[docker-test %s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[ -x "$PY" ] || die "$PY not found: create the project venv first (make venv)"

# ---------------------------------------------------------------- podman and base image ----
if ! command -v podman >/dev/null || ! podman image exists docker.io/library/python:3.11-slim; then
  if [ -f "$SHARED_TOOLS/container-base.sh" ] && [ "$(id -u)" = 0 ]; then
    log "preparing podman and the local python:3.11-slim base ($SHARED_TOOLS/container-base.sh)"
    bash "$SHARED_TOOLS/container-base.sh" >/dev/null
  elif ! command -v podman >/dev/null; then
    die "podman is not installed and $SHARED_TOOLS/container-base.sh cannot install it here"
  fi
fi

# ---------------------------------------------------------------- the pinned torch wheel ----
# Where /opt/wheels holds the pinned CPU torch wheel, the build sees it read-only at /wheels
# (podman build -v) and pip takes it from there (PIP_FIND_LINKS). A fixed path, unlike a
# loopback server on a free port, keeps the build arguments and so the layer cache stable.
BUILD_ARGS=()
cleanup() {
  podman rm -f -v --time 2 "$CONTAINER" >/dev/null 2>&1 || true
  if [ -n "${SCRATCH:-}" ]; then rm -rf "$SCRATCH"; fi
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM
SCRATCH="$(mktemp -d /tmp/docker-test.XXXXXX)"
free_port() {
  "$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}

if ls /opt/wheels/torch-*+cpu-*.whl >/dev/null 2>&1; then
  log "torch from the local CPU wheel in /opt/wheels"
  BUILD_ARGS+=(-v /opt/wheels:/wheels:ro --build-arg "TORCH_INDEX_URL="
    --build-arg "PIP_FIND_LINKS=/wheels")
else
  log "torch from the Dockerfile's default index (PyTorch CPU wheels)"
fi

# The demo trains inside the build: honour the test suite's thread cap on a shared machine.
if [ -n "${COHERENCE_TORCH_THREADS:-}" ]; then
  BUILD_ARGS+=(--build-arg "DEMO_TORCH_THREADS=$COHERENCE_TORCH_THREADS")
fi

# ---------------------------------------------------------------------------- build ----
log "building $IMAGE (podman, Dockerfile unchanged; the demo trains in the build, minutes)"
t_build="$(now)"
mkdir -p "$ARTIFACTS"
BUILD_LOG="$ARTIFACTS/docker-build.log"
podman build --format docker "${BUILD_ARGS[@]}" -t "$IMAGE" -f Dockerfile . \
  >"$BUILD_LOG" 2>&1 || { tail -n 60 "$BUILD_LOG" >&2; die "podman build (log: $BUILD_LOG)"; }
BUILD_S="$(since "$t_build")"
IMAGE_BYTES="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
IMAGE_MB="$(awk -v b="$IMAGE_BYTES" 'BEGIN { printf "%.0f", b / 1e6 }')"
TORCH_LINE="$(grep -m1 '^torch ' "$BUILD_LOG" || echo 'torch (cached layer)')"
STEPS="$(grep -c '^STEP ' "$BUILD_LOG" || true)"
CACHED="$(grep -c -- '--> Using cache' "$BUILD_LOG" || true)"
log "built in ${BUILD_S} s ($CACHED of $((STEPS - 1)) steps cached), image ${IMAGE_MB} MB, $TORCH_LINE"

# ------------------------------------------------------------------------ cold start ----
if [ -z "$PORT" ]; then PORT="$(free_port)"; fi
log "starting the container on http://127.0.0.1:$PORT"
t_start="$(now)"
# (stderr to a file: without systemd, podman logs errors about the health timer it cannot add;
# the HEALTHCHECK itself is run below with `podman healthcheck run`)
podman run -d --name "$CONTAINER" -p "127.0.0.1:$PORT:8501" "$IMAGE" >/dev/null 2>"$SCRATCH/run.err" \
  || { cat "$SCRATCH/run.err" >&2; die "podman run"; }
HEALTH_S=""
while [ "$(since "$t_start" | cut -d. -f1)" -lt "$HEALTH_TIMEOUT" ]; do
  if "$PY" -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:$PORT/_stcore/health', timeout=2).read() != b'ok')" 2>/dev/null; then
    HEALTH_S="$(since "$t_start")"
    break
  fi
  [ "$(podman inspect --format '{{.State.Running}}' "$CONTAINER")" = true ] || break
  sleep 0.2
done
if [ -z "$HEALTH_S" ]; then
  podman logs "$CONTAINER" 2>&1 | tail -n 40 >&2
  die "no healthy server within ${HEALTH_TIMEOUT} s"
fi
log "healthy after ${HEALTH_S} s"

SHOT="$ARTIFACTS/docker.png"
BROWSER_JSON="$("$PY" - "http://127.0.0.1:$PORT/" "$SHOT" "$CHART_TIMEOUT" "$t_start" <<'EOF'
"""Open the dashboard like a visitor: the first plotly chart, the title, then a shot.

Starting a container makes podman add a bridge and a veth interface; chromium sees the host's
network change and aborts the page's requests in flight with net::ERR_NETWORK_CHANGED, so the
app's scripts never load and the page stays blank (seen about once in three runs of the full
suite). A visitor would reload; so does this check, at most three times and only after that
error (a lost request or a failed navigation), within the same deadline, and it reports how
often it had to.
"""
import json
import sys
import time

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

url, shot, timeout_s, t_start = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
NETWORK_CHANGED = "ERR_NETWORK_CHANGED"
MAX_RELOADS = 3
with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
    )
    page = browser.new_page(viewport={"width": 1440, "height": 1400})
    events, network_changed = [], []
    t_page = time.time()
    deadline = t_page + timeout_s

    def note(text):
        events.append(f"{time.time() - t_start:7.1f} s {text}")

    def failed(request):
        note(f"request failed: {request.url} ({request.failure})")
        if NETWORK_CHANGED in (request.failure or ""):
            network_changed.append(request.url)

    def left_ms():
        return max(1.0, deadline - time.time()) * 1000

    def navigate(go):
        """goto or reload; a navigation lost to the network change counts as a lost request."""
        try:
            go(wait_until="domcontentloaded", timeout=left_ms())
        except PlaywrightError as error:
            if NETWORK_CHANGED not in str(error):
                raise
            note(f"navigation failed: {error}")
            network_changed.append(url)

    page.on("console", lambda m: note(f"console {m.type}: {m.text}"))
    page.on("pageerror", lambda e: note(f"pageerror: {e}"))
    page.on("requestfailed", failed)
    chart = page.locator(".stPlotlyChart .js-plotly-plot .main-svg, .js-plotly-plot .main-svg")
    reloads = 0
    try:
        navigate(lambda **kw: page.goto(url, **kw))
        while True:
            try:
                chart.first.wait_for(state="visible", timeout=min(5000, left_ms()))
                break
            except PlaywrightTimeout:
                if time.time() >= deadline:
                    raise
                if network_changed and reloads < MAX_RELOADS:
                    reloads += 1
                    note(f"reload {reloads}: {len(network_changed)} request(s) lost to a network change")
                    network_changed.clear()
                    navigate(page.reload)
        if page.title() != "Coherence Explorer":
            raise RuntimeError(f"the page's title is {page.title()!r}, not 'Coherence Explorer'")
    except Exception:
        page.screenshot(path=shot.replace(".png", "-failed.png"), full_page=False)
        print(f"title {page.title()!r}; page text: {page.inner_text('body')[:600]!r}", file=sys.stderr)
        print("\n".join(events[-40:]), file=sys.stderr)
        raise
    t_chart = time.time()
    page.wait_for_timeout(1500)  # let the fonts and the rest of the page settle for the shot
    errors = page.locator(".stException, [data-testid='stException']").count()
    heatmaps = page.locator(".js-plotly-plot .heatmaplayer image, .js-plotly-plot .hm").count()
    page.screenshot(path=shot, full_page=False)
    print(json.dumps({
        "page_to_chart_s": round(t_chart - t_page, 2),
        "start_to_chart_s": round(t_chart - t_start, 2),
        "charts": page.locator(".js-plotly-plot").count(),
        "heatmaps": heatmaps,
        "exceptions": errors,
        "title": page.title(),
        "reloads": reloads,
    }))
    browser.close()
EOF
)" || { podman logs "$CONTAINER" 2>&1 | tail -n 40 >&2; die "the dashboard did not show a chart"; }
log "browser: $BROWSER_JSON (screenshot $SHOT)"
read -r CHART_S EXCEPTIONS HEATMAPS RELOADS < <("$PY" -c "import json, sys; d = json.loads(sys.argv[1]); print(d['start_to_chart_s'], d['exceptions'], d['heatmaps'], d['reloads'])" "$BROWSER_JSON")
[ "$EXCEPTIONS" = 0 ] || die "the page shows $EXCEPTIONS exception(s); see $SHOT"

# ------------------------------------------------------------------- inside the image ----
USER_ID="$(podman exec "$CONTAINER" id -u)"
[ "$USER_ID" != 0 ] || die "the server runs as root"
podman exec "$CONTAINER" sh -c 'test -d /workspace/datasets/ce_demo && test "$(stat -c %a /workspace/cache)" = 700' \
  || die "the workspace was not seeded with the demo, or its cache is not mode 0700"
podman healthcheck run "$CONTAINER" >/dev/null 2>&1 || die "the image's HEALTHCHECK command fails"
t_stop="$(now)"
podman stop --time 20 "$CONTAINER" >/dev/null 2>&1
STOP_S="$(since "$t_stop")"
podman rm -f -v "$CONTAINER" >/dev/null 2>&1 # its anonymous workspace volume too
log "uid $USER_ID, demo seeded, cache 0700, HEALTHCHECK ok, stopped in ${STOP_S} s"

# --------------------------------------------------- mounting a workspace from the host ----
mkdir -p "$SCRATCH/mine" "$SCRATCH/locked"
chown 1000:1000 "$SCRATCH/mine" 2>/dev/null || chmod 0777 "$SCRATCH/mine"
podman run --rm --no-healthcheck -v "$SCRATCH/mine:/workspace" "$IMAGE" true 2>"$SCRATCH/seed.log" \
  || { cat "$SCRATCH/seed.log" >&2; die "an empty host workspace could not be seeded"; }
[ -d "$SCRATCH/mine/datasets/ce_demo" ] || die "an empty host workspace was not seeded"
podman run --rm --no-healthcheck -v "$SCRATCH/mine:/workspace" "$IMAGE" true 2>"$SCRATCH/keep.log"
grep -q "using its datasets" "$SCRATCH/keep.log" || die "a filled workspace was not left alone"
if [ "$(id -u)" = 0 ]; then # a root-owned 0755 directory is what `docker run -v` auto-creates
  chmod 0755 "$SCRATCH/locked"
  if podman run --rm --no-healthcheck -v "$SCRATCH/locked:/workspace" "$IMAGE" true 2>"$SCRATCH/locked.log"; then
    die "an unwritable workspace was accepted"
  fi
  grep -q "not writable" "$SCRATCH/locked.log" || die "no explanation for an unwritable workspace"
fi
log "host workspace: an empty one is seeded, a filled one kept, an unwritable one explained"

# ------------------------------------------------------------ a container's CPU limit ----
# `--cpus 1` leaves every host CPU in the affinity set; the jobs must count the limit instead
CPU_LINE="$(podman run --rm --no-healthcheck -e COHERENCE_SEED_DEMO=0 --cpus 1 "$IMAGE" python -c \
  'from coherence.cache import slots; print(slots.visible_cpus(), slots.machine_cores(), slots.threads_per_job())' \
  2>"$SCRATCH/cpus.log")" || { cat "$SCRATCH/cpus.log" >&2; die "the --cpus 1 check could not run"; }
[ "$(echo "$CPU_LINE" | cut -d' ' -f2-)" = "1 1" ] \
  || die "--cpus 1: expected 1 core and 1 torch thread, read (CPUs, cores, threads) $CPU_LINE"
log "--cpus 1 on $(echo "$CPU_LINE" | cut -d' ' -f1) CPUs: 1 core, 1 torch thread"

# --------------------------------------------------------------------------- results ----
"$PY" - "$BUILD_S" "$IMAGE_BYTES" "$HEALTH_S" "$CHART_S" "$STOP_S" "$HEATMAPS" "$TORCH_LINE" \
  "$CACHED" "$((STEPS - 1))" "$RELOADS" <<'EOF'
import sys

from bench.common import write_result

build_s, size, health_s, chart_s, stop_s, heatmaps, torch_line, cached, steps, reloads = sys.argv[1:]
rows = [{
    "image": "coherence-explorer (CPU)",
    "image_MB": round(int(size) / 1e6),
    "build_s": float(build_s),
    "build_steps_cached": f"{cached}/{steps}",
    "start_to_health_s": float(health_s),
    "start_to_first_chart_s": float(chart_s),
    "stop_s": float(stop_s),
    "page_reloads": int(reloads),
}]
notes = (
    "podman build of the Dockerfile unchanged (scripts/docker-test.sh); build_s counts only "
    "the steps rebuilt in that run (0 cached: pip install, demo simulation and training, "
    "default analysis; the base image from container-base.sh excluded). Cold start: `podman run` of a fresh container (demo copied into its empty "
    "workspace volume) until /_stcore/health answers ok, and until headless chromium shows the "
    f"first plotly chart ({heatmaps} heatmap image(s) on the first view; page_reloads: "
    "reloads after chromium lost requests to podman's network change, included in the "
    f"time). {torch_line}."
)
print(write_result("docker", "Docker image: size and cold start", rows, notes))
EOF
log "PASSED: build ${BUILD_S} s, image ${IMAGE_MB} MB, healthy ${HEALTH_S} s, first chart ${CHART_S} s"

if [ "$CLEAN" = 1 ]; then
  podman rmi -f "$IMAGE" >/dev/null && podman image prune -f >/dev/null
  log "removed $IMAGE and dangling layers"
fi
