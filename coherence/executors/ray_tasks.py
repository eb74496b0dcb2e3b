"""What runs on a Ray worker: one analysis unit or one training run, from files and arrays
shipped through the object store, answered with the worker's versions. Heavy imports happen
inside the tasks, so importing this module stays cheap."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from coherence.executors.ray_connect import worker_versions

SHIP_BYTES_ENV = "COHERENCE_RAY_SHIP_BYTES"
# Test hooks only (set in the workers through runtime_env): every unit task appends its pid
# to <dir>/<checkpoint>-t<trajectory>.pid and, on its first attempt, sleeps the delay, so
# tests can kill a worker or cancel a job mid-unit. Never set them in production.
TEST_UNIT_DIR_ENV = "COHERENCE_TEST_RAY_UNIT_DIR"
TEST_UNIT_DELAY_ENV = "COHERENCE_TEST_RAY_UNIT_DELAY"


def _set_threads(threads: int) -> None:
    import torch

    configured = os.environ.get("COHERENCE_TORCH_THREADS", "").strip()
    torch.set_num_threads(int(configured) if configured.isdigit() else max(1, threads))


def _test_hook(checkpoint: str, trajectory: int) -> None:
    directory = os.environ.get(TEST_UNIT_DIR_ENV)
    if not directory:
        return
    marker = Path(directory) / f"{checkpoint}-t{trajectory}.pid"
    first = not marker.exists()
    with open(marker, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    if first:
        time.sleep(float(os.environ.get(TEST_UNIT_DELAY_ENV) or 30))


def _write_files(directory: Path, files: Mapping[str, bytes]) -> None:
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def analysis_unit_task(
    meta: dict[str, Any], checkpoint_files: dict[str, bytes], batch: dict[str, np.ndarray]
) -> dict[str, Any]:
    """On a Ray worker: one (checkpoint, batch) unit from shipped files and arrays; returns
    the unit as npz bytes + JSON with the worker's versions (or only the versions, without
    computing, when they differ from the driver's)."""
    reply: dict[str, Any] = {"versions": worker_versions(), "host": socket.gethostname()}
    if meta["driver_versions"] != reply["versions"]:
        return reply
    import torch

    from coherence.analysis.batch import AnalysisBatch
    from coherence.analysis.pipeline import compute_unit, estimate_cost
    from coherence.analysis.request import AnalysisRequest
    from coherence.analysis.results import npz_bytes
    from coherence.errors import RequestError
    from coherence.surrogates import checkpoint as ckpt

    started = time.perf_counter()
    s, b = meta["s"], meta["b"]
    _set_threads(meta["threads"])
    _test_hook(meta["checkpoint_name"], meta["trajectory"])
    request = AnalysisRequest.from_dict(meta["request"])
    device = request.torch_device
    with tempfile.TemporaryDirectory(prefix="coherence-unit-") as tmp:
        directory = Path(tmp) / meta["checkpoint_name"]
        directory.mkdir()
        _write_files(directory, checkpoint_files)
        model, _ = ckpt.load(directory, device=device, trust_code=meta["trust_code"])
    dtype = next(model.parameters()).dtype
    inputs = torch.from_numpy(np.array(batch["inputs"]))
    targets = torch.from_numpy(np.array(batch["targets"]))
    cost = estimate_cost(model, request, inputs[:1].to(device, dtype))
    if not cost.fits:
        raise RequestError(
            f"on Ray worker {reply['host']} this unit would not fit in memory "
            f"({cost.describe()}); shrink the window or classes, or use larger workers"
        )
    unit_batch = AnalysisBatch(
        inputs=inputs,
        targets=targets,
        classes=tuple(request.classes),
        trajectory=int(meta["trajectory"]),
        steps=tuple(meta["steps"]),
        times=tuple(meta["times"]),
    )
    computing = time.perf_counter()
    unit = compute_unit(model, unit_batch, request, s, b)
    computed = time.perf_counter() - computing
    arrays, metadata = unit.to_parts()
    reply.update(
        npz=npz_bytes(arrays),
        json=json.dumps(metadata),
        device=str(device),
        seconds=time.perf_counter() - started,
        compute_seconds=computed,
    )
    return reply


class ProgressBoard:
    """A Ray actor (no CPU) where training tasks post their latest progress and their log
    lines, and the driver reads them: progress bars, and the warnings a local run prints (a
    step that may not fit in memory), for runs that compute elsewhere, while they run."""

    def __init__(self) -> None:
        self.latest: dict[str, tuple[int, int, float, float]] = {}
        self.lines: list[tuple[str, str]] = []

    def post(self, run: str, epoch: int, epochs: int, fraction: float, loss: float) -> None:
        self.latest[run] = (epoch, epochs, fraction, loss)

    def read(self) -> dict[str, tuple[int, int, float, float]]:
        return dict(self.latest)

    def say(self, run: str, message: str) -> None:
        self.lines.append((run, message))

    def said(self, start: int) -> list[tuple[str, str]]:
        """The log lines posted since the first ``start`` (the driver counts what it read)."""
        return self.lines[start:]


PROGRESS_INTERVAL = 1.0  # seconds between posts of one training run


def _check_node_copy(data: Path, meta: dict[str, Any], host: str) -> None:
    """Refuse a node's copy of the dataset that is not the driver's: trained on it, the
    checkpoint recorded the node's files, and a study refused it as "trained otherwise"
    only after the training."""
    from coherence.errors import RequestError
    from coherence.simulation.dataset import files_fingerprint

    expected = meta.get("data_expected")
    if not expected:
        return
    paths = [data / rel for rel in expected["files"]]
    missing = [rel for rel in expected["files"] if not (data / rel).is_file()]
    if missing or files_fingerprint(paths) != expected["fingerprint"]:
        what = f"lacks {', '.join(missing)}" if missing else "holds other files than the driver's"
        raise RequestError(
            f"dataset {meta['data_path']} on Ray worker {host} {what} (it is read on the node: "
            f"larger than {SHIP_BYTES_ENV} allows to ship); make every node's copy the "
            f"driver's, or raise {SHIP_BYTES_ENV}"
        )


def training_task(
    meta: dict[str, Any],
    dataset_files: dict[str, bytes] | None,
    resume_files: dict[str, bytes] | None,
    board: Any = None,
) -> dict[str, Any]:
    """On a Ray worker: one training run on shipped (or same-path) data, resumed from the
    shipped checkpoint set if any, posting its progress to ``board`` (a ProgressBoard actor);
    returns the checkpoint's files and the training snapshots it wrote."""
    reply: dict[str, Any] = {"versions": worker_versions(), "host": socket.gethostname()}
    if meta["driver_versions"] != reply["versions"]:
        return reply
    from coherence.errors import RequestError
    from coherence.surrogates import checkpoint as ckpt
    from coherence.surrogates import snapshots
    from coherence.surrogates.training import TrainingArgs, train

    started = time.perf_counter()
    _set_threads(meta["threads"])
    fields = dict(meta["args"])
    fields["classes"] = tuple(fields["classes"])
    args = TrainingArgs(**fields)
    with tempfile.TemporaryDirectory(prefix="coherence-train-") as tmp:
        if dataset_files is None:
            data = Path(meta["data_path"])
            if not data.is_dir():
                raise RequestError(
                    f"dataset {meta['data_path']} is larger than {SHIP_BYTES_ENV} allows to "
                    f"ship, and Ray worker {reply['host']} has no such directory: mount it at "
                    f"the same path on every node, or raise {SHIP_BYTES_ENV}"
                )
            _check_node_copy(data, meta, reply["host"])
        else:
            data = Path(tmp) / "data" / meta["data_name"]
            _write_files(data, dataset_files)
        out = Path(tmp) / "out" / meta["out_name"]
        out.mkdir(parents=True)
        _write_files(out, resume_files or {})
        last = [0.0]

        def post(epoch: int, epochs: int, fraction: float, loss: float) -> None:
            now = time.monotonic()
            if board is not None and (now - last[0] >= PROGRESS_INTERVAL or fraction >= 1.0):
                last[0] = now
                board.post.remote(meta["run"], epoch, epochs, fraction, loss)

        def say(message: str) -> None:
            """A training log line, with the driver's paths for this worker's copies."""
            if board is not None:
                text = message.replace(str(out), meta["out_path"])
                board.say.remote(meta["run"], text.replace(str(data), meta["data_path"]))

        train(data, out, args, progress=post, log=say, dataset_root=meta["data_path"])
        files = {
            name: (out / name).read_bytes() for name in ckpt.SET_FILES if (out / name).is_file()
        }
        # the snapshots this run wrote (a resumed one: those after its start) travel too
        reply.update(
            files=files,
            epochs=len(ckpt.read_history(out)),
            snapshots=snapshots.snapshot_files(out),
        )
    reply["seconds"] = time.perf_counter() - started
    return reply
