#!/bin/sh
# Container entrypoint: make the workspace usable, then run the command (default: the dashboard).
#
# The workspace is $COHERENCE_WORKSPACE (default /workspace, a volume). When it holds no
# dataset and no checkpoint (a fresh volume, or an empty host directory mounted there), the
# demo baked into the image at build time is copied in, cached default analysis included, so
# the dashboard shows its first heatmap at once. COHERENCE_SEED_DEMO=0 turns the copy off; a
# workspace with your own datasets or checkpoints is never touched.
set -eu

ws="${COHERENCE_WORKSPACE:-/workspace}"
demo="${COHERENCE_DEMO_SOURCE:-/opt/coherence/demo-workspace}"
uid="$(id -u)"
gid="$(id -g)"

say() { printf 'coherence-entrypoint: %s\n' "$*" >&2; }

# Streamlit and torch write small files under $HOME; an arbitrary --user has no home here.
if [ ! -w "${HOME:-/nonexistent}" ]; then
  export HOME=/tmp
fi

mkdir -p "$ws" 2>/dev/null || true
if [ ! -d "$ws" ] || [ ! -w "$ws" ] || [ ! -x "$ws" ]; then
  owner="$(stat -c '%u:%g' "$ws" 2>/dev/null || echo 'missing')"
  say "error: the workspace $ws (owner $owner) is not writable by this container's user" \
    "$uid:$gid. Results are cached under $ws/cache, so it must be. Fix one of:" \
    "run with --user \"\$(id -u):\$(id -g)\" (the owner of the host directory you mount)," \
    "or 'chown -R $uid:$gid' that host directory, or use a named volume" \
    "(-v coherence-workspace:$ws)."
  exit 1
fi

has_entries() { [ -d "$1" ] && [ -n "$(ls -A "$1" 2>/dev/null)" ]; }

if has_entries "$ws/datasets" || has_entries "$ws/checkpoints"; then
  say "workspace $ws: using its datasets and checkpoints"
elif [ "${COHERENCE_SEED_DEMO:-1}" = "0" ]; then
  say "workspace $ws holds no dataset or checkpoint and COHERENCE_SEED_DEMO=0:" \
    "the dashboard will explain how to add them"
elif [ -d "$demo" ]; then
  say "workspace $ws is empty: copying the demo workspace into it (set COHERENCE_SEED_DEMO=0" \
    "to keep it empty)"
  cp -R "$demo/." "$ws/"
  chmod 700 "$ws/cache" 2>/dev/null || true
else
  say "workspace $ws is empty and this image has no demo at $demo"
fi

exec "$@"
