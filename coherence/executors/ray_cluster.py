"""The Ray executor: every missing (checkpoint, batch) unit and every training run is one Ray
task on the cluster at ``address``; the driver keeps the cache work.

What travels, through Ray's object store only (workers need no shared filesystem):
checkpoint files (config.json + model.safetensors, and the whole set for a resumed
training), batch arrays, the dataset files a training reads (up to ``COHERENCE_RAY_SHIP_BYTES``,
default 2 GiB; larger datasets are read from the same path on every node), and back the unit
as the npz + JSON the cache stores (``UnitResult.to_parts``) or the checkpoint's files.

Each task asks for ``COHERENCE_RAY_CPUS`` CPUs (default 1; torch runs on that many threads)
and ``COHERENCE_RAY_GPUS`` GPUs (fractional allowed; default 1 when the cluster has GPUs and
the device is not ``cpu``, else 0). A task whose worker dies is retried up to
``COHERENCE_RAY_RETRIES`` times (default 3); a unit whose retries are exhausted fails the job
with a message naming it, and only whole units are ever stored. Every reply carries the
worker's versions, compared before the result is trusted. Connecting is bounded by
``COHERENCE_RAY_TIMEOUT`` seconds (default 10): an unreachable address is one sentence.

Ray's ports carry no authentication: run the cluster on a private network only (README).
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import coherence
from coherence.executors import (
    AnalysisProgress,
    ClusterError,
    ClusterUnreachable,
    TrainRun,
    VersionMismatch,
)

TIMEOUT_ENV = "COHERENCE_RAY_TIMEOUT"
RETRIES_ENV = "COHERENCE_RAY_RETRIES"
CPUS_ENV = "COHERENCE_RAY_CPUS"
GPUS_ENV = "COHERENCE_RAY_GPUS"
SHIP_BYTES_ENV = "COHERENCE_RAY_SHIP_BYTES"
POLL_SECONDS = 0.5  # between checks of the cancel flag while units run
# Test hooks only (set in the workers through runtime_env): every unit task appends its pid
# to <dir>/<checkpoint>-t<trajectory>.pid and, on its first attempt, sleeps the delay, so
# tests can kill a worker or cancel a job mid-unit. Never set them in production.
TEST_UNIT_DIR_ENV = "COHERENCE_TEST_RAY_UNIT_DIR"
TEST_UNIT_DELAY_ENV = "COHERENCE_TEST_RAY_UNIT_DELAY"


def _number(name: str, default: float, *, minimum: float = 0.0) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = minimum - 1
    if not value >= minimum:
        raise ClusterError(f"{name}={text!r}: expected a number ≥ {minimum:g}")
    return value


def worker_versions() -> dict[str, str]:
    """What must agree between driver and worker for a unit to land in the same cache entry."""
    from coherence.cache.keys import ANALYSIS_CODE_VERSION

    return {"coherence": coherence.__version__, "analysis_code": ANALYSIS_CODE_VERSION}


def check_versions(worker: Mapping[str, Any], where: str) -> None:
    """Refuse a reply from a worker whose versions differ from this driver's."""
    mine = worker_versions()
    if dict(worker) != mine:
        theirs = ", ".join(f"{k} {worker.get(k)!r}" for k in mine)
        ours = ", ".join(f"{k} {v!r}" for k, v in mine.items())
        raise VersionMismatch(
            f"{where}: the Ray worker runs {theirs} but this driver runs {ours}; install the "
            f"same coherence-explorer on every node (pip install 'coherence-explorer[cluster]"
            f"=={coherence.__version__}') and restart its Ray workers"
        )


# ------------------------------------------------------------------------- connecting ----


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a HOST:PORT or ray://HOST:PORT address; None for auto / local."""
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep:
        return None
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def connect(address: str, timeout: float | None = None) -> Any:
    """The ``ray`` module, connected to ``address`` (a connection made earlier in this process
    is reused). Raises ClusterUnreachable within ``timeout`` seconds when nothing answers."""
    try:
        import ray
    except ImportError:
        raise ClusterUnreachable(
            f"--ray-address {address}: Ray is not installed here; install it with "
            "pip install 'coherence-explorer[cluster]' (on this machine and every node)"
        ) from None
    if ray.is_initialized():
        return ray
    timeout = _number(TIMEOUT_ENV, 10.0, minimum=0.1) if timeout is None else timeout
    endpoint = _host_port(address)
    fix = (
        "start it with `ray start --head` there, or correct --ray-address / "
        "COHERENCE_RAY_ADDRESS (unset it to compute locally)"
    )
    if endpoint is not None:
        try:
            socket.create_connection(endpoint, timeout=timeout).close()
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise ClusterUnreachable(
                f"cannot reach the Ray cluster at {address} ({reason}); {fix}"
            ) from None
    outcome: dict[str, BaseException] = {}

    def init() -> None:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except BaseException as error:  # reported below, in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=init, name="ray-connect", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ClusterUnreachable(
            f"the Ray cluster at {address} did not answer within {timeout:g} s (is it a Ray "
            f"head's GCS port, 6379 by default?); {fix}"
        )
    if "error" in outcome:
        error = outcome["error"]
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ClusterUnreachable(f"cannot connect to the Ray cluster at {address} ({first}); {fix}")
    return ray


_REMOTE: dict[str, Any] = {}


def _remote(ray: Any, function: Callable) -> Any:
    """``ray.remote(function)``, made once per process (Ray exports it once)."""
    if function.__name__ not in _REMOTE:
        _REMOTE[function.__name__] = ray.remote(function)
    return _REMOTE[function.__name__]


# ----------------------------------------------------------------------- worker side ----


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
    unit = compute_unit(model, unit_batch, request, s, b)
    arrays, metadata = unit.to_parts()
    reply.update(
        npz=npz_bytes(arrays),
        json=json.dumps(metadata),
        device=str(device),
        seconds=time.perf_counter() - started,
    )
    return reply


def training_task(
    meta: dict[str, Any],
    dataset_files: dict[str, bytes] | None,
    resume_files: dict[str, bytes] | None,
) -> dict[str, Any]:
    """On a Ray worker: one training run on shipped (or same-path) data, resumed from the
    shipped checkpoint set if any; returns the checkpoint's files."""
    reply: dict[str, Any] = {"versions": worker_versions(), "host": socket.gethostname()}
    if meta["driver_versions"] != reply["versions"]:
        return reply
    from coherence.errors import RequestError
    from coherence.surrogates import checkpoint as ckpt
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
        else:
            data = Path(tmp) / "data" / meta["data_name"]
            _write_files(data, dataset_files)
        out = Path(tmp) / "out" / meta["out_name"]
        out.mkdir(parents=True)
        _write_files(out, resume_files or {})
        train(data, out, args, dataset_root=meta["data_path"])
        files = {
            name: (out / name).read_bytes() for name in ckpt.SET_FILES if (out / name).is_file()
        }
        reply.update(files=files, epochs=len(ckpt.read_history(out)))
    reply["seconds"] = time.perf_counter() - started
    return reply


# ----------------------------------------------------------------------- driver side ----


def _checkpoint_files(directory: str | Path, names: Sequence[str]) -> dict[str, bytes]:
    from coherence.surrogates import fileset

    directory = Path(directory)
    out = {}
    for name in names:
        try:
            out[name] = fileset.read_bytes(directory, name)
        except FileNotFoundError:
            continue
    return out


def _dataset_files(data: Path, classes: Sequence[str]) -> tuple[dict[str, Path], int]:
    """The train and valid files a training of ``classes`` (all if empty) reads, by relative
    path, and their total size."""
    from coherence.simulation.dataset import open_dataset

    info = open_dataset(data)
    wanted = list(classes) or [c for c in info.classes if c in info.files.get("train", {})]
    paths = {}
    for split in ("train", "valid"):
        for name in wanted:
            path = Path(info.file(split, name).path)
            paths[f"data/{split}/{path.name}"] = path
    return paths, sum(p.stat().st_size for p in paths.values())


class RayExecutor:
    """Computes units and training runs as Ray tasks on the cluster at ``address``.

    ``runtime_env`` is passed to every task (e.g. ``{"env_vars": {...}}``); ``cpus``,
    ``gpus`` and ``retries`` override the environment settings (see the module docstring).
    """

    name = "ray"
    local = False

    def __init__(
        self,
        address: str,
        *,
        runtime_env: dict[str, Any] | None = None,
        cpus: float | None = None,
        gpus: float | None = None,
        retries: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self.address = address
        self.runtime_env = runtime_env
        self.cpus = _number(CPUS_ENV, 1.0, minimum=0.01) if cpus is None else cpus
        self.gpus = gpus if gpus is not None else os.environ.get(GPUS_ENV)
        self.retries = int(_number(RETRIES_ENV, 3.0)) if retries is None else retries
        self.timeout = timeout

    def connect(self) -> Any:
        return connect(self.address, self.timeout)

    def _gpus(self, ray: Any, device: str) -> float:
        if isinstance(self.gpus, str) and self.gpus.strip():
            return _number(GPUS_ENV, 0.0)
        if isinstance(self.gpus, int | float):
            return float(self.gpus)
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        return 1.0 if has_gpu and device != "cpu" else 0.0

    def _options(self, ray: Any, device: str, name: str) -> dict[str, Any]:
        options: dict[str, Any] = {
            "num_cpus": self.cpus,
            "num_gpus": self._gpus(ray, device),
            "max_retries": self.retries,
            "retry_exceptions": False,
            "name": name,
        }
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        return options

    def _reply(self, ray: Any, ref: Any, where: str) -> dict[str, Any]:
        """ray.get with every failure turned into one sentence naming ``where``."""
        from ray import exceptions

        from coherence.errors import CoherenceError

        try:
            reply = ray.get(ref)
        except exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, CoherenceError):
                raise ClusterError(f"{where}: {cause}") from None
            if isinstance(cause, ImportError):
                raise ClusterError(
                    f"{where}: the Ray worker cannot import what it needs ({cause}); install "
                    f"coherence-explorer {coherence.__version__} with the [cluster] extra on "
                    "every node"
                ) from None
            first = (str(cause).strip().splitlines() or [""])[0]
            raise ClusterError(
                f"{where} failed on the Ray cluster: {type(cause).__name__}: {first}"
            ) from None
        except exceptions.TaskCancelledError:
            raise ClusterError(f"{where} was cancelled on the Ray cluster") from None
        except exceptions.RayError as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ClusterError(
                f"{where} failed on the Ray cluster after {self.retries} retries "
                f"({type(error).__name__}: {first[:200]}); units finished so far are cached: "
                "run it again to resume"
            ) from None
        check_versions(reply.get("versions", {}), where)
        return reply

    # -------------------------------------------------------------------- analysis ----

    def run_analysis(
        self,
        request: Any,
        *,
        progress: AnalysisProgress | None = None,
        trust_code: bool = False,
        known_units: Mapping[tuple[int, int], Any] | None = None,
        on_unit: Callable[[Any], None] | None = None,
    ) -> Any:
        from coherence.analysis.pipeline import assemble, checkpoint_fingerprint, prepare
        from coherence.analysis.results import UnitResult
        from coherence.surrogates import checkpoint as ckpt

        report = progress or (lambda fraction, stage: None)
        started = time.perf_counter()
        ray = self.connect()
        info, batches = prepare(request)
        S, B = len(request.checkpoints), len(batches)
        units = dict(known_units or {})
        todo = [(s, b) for s in range(S) for b in range(B) if (s, b) not in units]
        report(len(units) / (S * B), f"submitting {len(todo)} units to the Ray cluster")
        names = [Path(c).name for c in request.checkpoints]
        checkpoints, fingerprints = {}, {}
        for s in sorted({s for s, _ in todo}):
            directory = request.checkpoints[s]
            ckpt.check_compatible(
                ckpt.read_config(directory),
                family=info.family.value,
                channels=info.channels,
                resolution=(info.height, info.width),
                where=f"checkpoint {names[s]}",
            )
            files = _checkpoint_files(directory, (ckpt.CONFIG_FILE, ckpt.WEIGHTS_FILE))
            checkpoints[s] = ray.put(files)
            fingerprints[s] = checkpoint_fingerprint(directory)
        arrays = {
            b: ray.put({"inputs": batches[b].inputs.numpy(), "targets": batches[b].targets.numpy()})
            for b in sorted({b for _, b in todo})
        }
        task = _remote(ray, analysis_unit_task)
        base = {
            "driver_versions": worker_versions(),
            "request": request.to_dict(),
            "trust_code": trust_code,
            "threads": max(1, int(self.cpus)),
        }
        pending = {}
        for s, b in todo:
            meta = {
                **base,
                "s": s,
                "b": b,
                "checkpoint_name": names[s],
                "trajectory": batches[b].trajectory,
                "steps": list(batches[b].steps),
                "times": list(batches[b].times),
            }
            label = f"coherence unit {names[s]} trajectory {request.trajectories[b]}"
            options = self._options(ray, request.device, label)
            pending[task.options(**options).remote(meta, checkpoints[s], arrays[b])] = (s, b)
        devices = set()
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    s, b = pending.pop(ref)
                    where = f"unit (checkpoint {names[s]}, trajectory {request.trajectories[b]})"
                    reply = self._reply(ray, ref, where)
                    with np.load(io.BytesIO(reply["npz"]), allow_pickle=False) as data:
                        parts = {key: data[key] for key in data.files}
                    unit = UnitResult.from_parts(parts, json.loads(reply["json"]))
                    if (unit.checkpoint_index, unit.batch_index) != (s, b):
                        raise ClusterError(f"{where}: the worker returned another unit")
                    unit = replace(unit, checkpoint_fingerprint=fingerprints[s])
                    units[s, b] = unit
                    devices.add(f"{reply['device']} on {reply['host']}")
                    if on_unit is not None:
                        on_unit(unit)
                running = f", {len(pending)} running or queued" if pending else ""
                report(
                    len(units) / (S * B),
                    f"{len(units)}/{S * B} units done on the Ray cluster{running}",
                )
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        device = "ray " + self.address + (f" ({', '.join(sorted(devices))})" if devices else "")
        seconds = time.perf_counter() - started
        return assemble(
            request, info, batches, list(units.values()), device=device, seconds=seconds
        )

    # -------------------------------------------------------------------- training ----

    def train(self, runs: Sequence[TrainRun], *, log: Callable[[str], None] | None = None) -> None:
        """Every run as its own task, all at once; each checkpoint is written (one atomic
        set) as soon as its run finishes. A failed run does not stop the others."""
        from coherence.surrogates import checkpoint as ckpt
        from coherence.surrogates import fileset

        say = log or (lambda message: None)
        if not runs:
            return
        ray = self.connect()
        limit = _number(SHIP_BYTES_ENV, 2.0 * 1024**3)
        task = _remote(ray, training_task)
        pending = {}
        for run in runs:
            paths, size = _dataset_files(Path(run.data), run.args.classes)
            shipped = None
            if size <= limit:
                shipped = ray.put({rel: path.read_bytes() for rel, path in paths.items()})
            ckpt.recover(run.out)
            resume = None
            if (run.out / ckpt.CONFIG_FILE).is_file():
                ckpt.verify(run.out)
                resume = _checkpoint_files(run.out, (*ckpt.SET_FILES, ckpt.MANIFEST_FILE))
            meta = {
                "driver_versions": worker_versions(),
                "args": json.loads(json.dumps(run.args.to_dict())),
                "data_path": str(Path(run.data)),
                "data_name": Path(run.data).name,
                "out_name": run.out.name,
                "threads": max(1, int(self.cpus)),
            }
            options = self._options(ray, run.args.device, f"coherence train {run.out.name}")
            pending[task.options(**options).remote(meta, shipped, resume)] = run
            say(f"submitted training {run.out.name} to the Ray cluster at {self.address}")
        errors: list[ClusterError] = []
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    run = pending.pop(ref)
                    try:
                        reply = self._reply(ray, ref, f"training {run.out.name}")
                    except ClusterError as error:
                        errors.append(error)
                        say(str(error))
                        continue
                    files = reply["files"]
                    fileset.write_set(run.out, files, {"epochs": reply["epochs"]}, ckpt.SET_FILES)
                    if run.progress is not None:
                        history = ckpt.read_history(run.out)
                        loss = history[-1]["train_smse"] if history else float("nan")
                        run.progress(run.args.epochs - 1, run.args.epochs, 1.0, loss)
                    say(
                        f"trained {run.out.name} on {reply['host']} in "
                        f"{reply['seconds']:.0f} s ({reply['epochs']} epochs)"
                    )
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        if errors:
            more = f" ({len(errors)} of {len(runs)} runs failed)" if len(errors) > 1 else ""
            raise ClusterError(f"{errors[0]}{more}")
