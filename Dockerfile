# Coherence Explorer: the dashboard with its demo workspace, ready at container start.
#
#   CPU (default):  docker build -t coherence-explorer .
#   CUDA:           docker build -t coherence-explorer:cuda \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   With Ray:       docker build -t coherence-explorer:cluster --build-arg EXTRAS=cluster .
#   Local wheel:    podman build -v /opt/wheels:/wheels:ro --build-arg TORCH_INDEX_URL= \
#                     --build-arg PIP_FIND_LINKS=/wheels .   (what scripts/docker-test.sh does)
#   Run:            docker run --rm -p 8501:8501 coherence-explorer   → http://localhost:8501
#
# Layers go from rarely to often changed: system packages, venv + pinned dependencies (only
# pyproject.toml and docker/constraints.txt invalidate it), the source, then the demo
# workspace (simulated and trained here, several minutes on 2 cores; it depends on the code).
FROM python:3.11-slim

# torch comes from this extra index when set. The default is PyTorch's CPU index, so a plain
# build never pulls the multi-GB CUDA wheels; set it to a CUDA index (cu126, cu128, ...) for a
# GPU image, or to the empty string to take torch from PyPI / PIP_FIND_LINKS alone.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Optional: a find-links page or folder holding wheels (pip reads these from the environment),
# and a PyPI mirror.
ARG PIP_FIND_LINKS
ARG PIP_INDEX_URL
ARG PIP_VERSION=26.3
ARG APP_UID=1000
# Optional extras of pyproject.toml to install, comma-separated: "cluster" adds Ray (the
# docker-compose `cluster` profile builds with it).
ARG EXTRAS=

# tini as PID 1: forwards SIGTERM to streamlit (docker stop takes a second, not ten) and reaps
# the dashboard's background analysis workers. Debian's chromium: kaleido renders the PNG/SVG
# figure exports with it (BROWSER_PATH below; nothing is downloaded at run time).
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini chromium \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

RUN useradd --uid "$APP_UID" --user-group --create-home --shell /bin/bash coherence

ENV BROWSER_PATH=/usr/bin/chromium \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies only: direct pins from pyproject.toml, transitive pins from constraints.txt.
COPY pyproject.toml docker/constraints.txt /tmp/deps/
RUN python -m venv "$VIRTUAL_ENV" \
 && pip install --upgrade "pip==$PIP_VERSION" \
 && python -c "import os, tomllib; p = tomllib.load(open('/tmp/deps/pyproject.toml', 'rb'))['project']; deps = p['dependencies'] + [d for e in os.environ.get('EXTRAS', '').split(',') if e for d in p['optional-dependencies'][e]]; open('/tmp/deps/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
 && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -r /tmp/deps/requirements.txt -c /tmp/deps/constraints.txt \
 && python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" \
 && rm -rf /tmp/deps

# The project itself, installed like any wheel (the dashboard script ships in the package).
WORKDIR /app
COPY . /app
RUN pip install --no-deps /app \
 && python -m compileall -q /app/docker \
 && chmod 0755 /app/docker/entrypoint.sh

# The demo workspace and its default analysis, baked read-only; the entrypoint copies it into
# an empty workspace volume at start. DEMO_TORCH_THREADS caps torch's threads for this step
# (1 on a build host shared with other jobs: oversubscribed OpenMP threads spin); empty = all.
ARG DEMO_TORCH_THREADS=
RUN if [ -n "$DEMO_TORCH_THREADS" ]; then export OMP_NUM_THREADS="$DEMO_TORCH_THREADS"; fi \
 && coherence demo --workspace /opt/coherence/demo-workspace \
 && python /app/docker/check_demo.py /opt/coherence/demo-workspace \
 && chmod -R a+rX,go-w /opt/coherence

RUN mkdir -p /workspace && chown coherence:coherence /workspace && chmod 0755 /workspace
ENV COHERENCE_WORKSPACE=/workspace \
    COHERENCE_PORT=8501
VOLUME ["/workspace"]

USER coherence
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/_stcore/health' % os.environ.get('COHERENCE_PORT', '8501'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/app/docker/entrypoint.sh"]
CMD ["sh", "-c", "exec coherence serve --address 0.0.0.0 --port \"$COHERENCE_PORT\""]
