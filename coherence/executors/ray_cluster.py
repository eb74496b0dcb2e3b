"""The Ray executor: every missing (checkpoint, batch) unit and every training run is one Ray
task on the cluster at ``address``; the driver keeps the cache work.

What travels, through Ray's object store only (workers need no shared filesystem):
checkpoint files (config.json + model.safetensors, and the whole set for a resumed
training), batch arrays, the dataset files a training reads (up to ``COHERENCE_RAY_SHIP_BYTES``,
default 2 GiB; larger datasets are read from the same path on every node, which must hold the
driver's very files), and back the unit
as the npz + JSON the cache stores (``UnitResult.to_parts``) or the checkpoint's files with
the training snapshots the run wrote (``snapshots.snapshot_files``).

Each task asks for ``COHERENCE_RAY_CPUS`` CPUs (default 1; torch runs on that many threads)
and ``COHERENCE_RAY_GPUS`` GPUs (fractional allowed; default 1 when the cluster has GPUs and
the device is not ``cpu``, else 0). A task whose worker dies is retried up to
``COHERENCE_RAY_RETRIES`` times (default 3); a unit whose retries are exhausted fails the job
with a message naming it, and only whole units are ever stored. Every reply carries the
worker's versions, compared before the result is trusted. Connecting is bounded by
``COHERENCE_RAY_TIMEOUT`` seconds (default 10): an unreachable address is one sentence.

Ray's ports carry no authentication unless token authentication is on (README, Security): run
the cluster on a private network only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from coherence.errors import CoherenceError
from coherence.executors import (
    AnalysisProgress,
    ClusterError,
    TrainRun,
)
from coherence.executors.ray_connect import (
    _remote,
    connect,
    env_number,
    get_reply,
    worker_versions,
)
from coherence.executors.ray_tasks import (
    SHIP_BYTES_ENV,
    ProgressBoard,
    analysis_unit_task,
    training_task,
)
from coherence.wording import plural

RETRIES_ENV = "COHERENCE_RAY_RETRIES"
CPUS_ENV = "COHERENCE_RAY_CPUS"
GPUS_ENV = "COHERENCE_RAY_GPUS"
POLL_SECONDS = 0.5  # between checks of the cancel flag while units run


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


def _ship_checkpoints(
    ray: Any, request: Any, info: Any, indices: set[int]
) -> tuple[dict[int, Any], dict[int, str]]:
    """Each needed checkpoint, checked against the dataset, put in the object store once:
    ({s: reference to its config and weights}, {s: its fingerprint})."""
    from coherence.analysis.pipeline import check_checkpoint, checkpoint_fingerprint
    from coherence.surrogates import checkpoint as ckpt

    checkpoints, fingerprints = {}, {}
    for s in sorted(indices):
        directory = request.checkpoints[s]
        ckpt.verify(directory)  # the files shipped are the set saved together
        check_checkpoint(directory, info, request.split, request.classes)
        files = _checkpoint_files(directory, (ckpt.CONFIG_FILE, ckpt.WEIGHTS_FILE))
        checkpoints[s] = ray.put(files)
        fingerprints[s] = checkpoint_fingerprint(directory)
    return checkpoints, fingerprints


def _naming_the_data(error: ClusterError, info: Any, request: Any, b: int) -> CoherenceError:
    """A worker's overflow blamed on the data, named as a local run names it: by the class
    files that hold the extreme values (the worker holds the batch's arrays, not its files)."""
    from coherence.analysis.influence import ExtremeDataError
    from coherence.analysis.pipeline import named_by_files

    if isinstance(error.worker_error, ExtremeDataError):
        return named_by_files(error.worker_error, info, request, request.trajectories[b])
    return error


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
        self.cpus = env_number(CPUS_ENV, 1.0, minimum=0.01) if cpus is None else cpus
        self.gpus = gpus if gpus is not None else os.environ.get(GPUS_ENV)
        self.retries = int(env_number(RETRIES_ENV, 3.0)) if retries is None else retries
        self.timeout = timeout
        # per unit computed: where, task seconds on the worker, of which compute_unit
        self.timings: list[dict[str, Any]] = []

    def connect(self) -> Any:
        return connect(self.address, self.timeout)

    def _gpus(self, ray: Any, device: str) -> float:
        if isinstance(self.gpus, str) and self.gpus.strip():
            return env_number(GPUS_ENV, 0.0)
        if isinstance(self.gpus, int | float):
            return float(self.gpus)
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        return 1.0 if has_gpu and device != "cpu" else 0.0

    def _options(self, ray: Any, device: str) -> dict[str, Any]:
        """Ray task options: the resource request, retries on worker death only."""
        options: dict[str, Any] = {
            "num_cpus": self.cpus,
            "num_gpus": self._gpus(ray, device),
            "max_retries": self.retries,
            "retry_exceptions": False,
        }
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        return options

    # -------------------------------------------------------------------- analysis ----

    def run_analysis(
        self,
        request: Any,
        *,
        progress: AnalysisProgress | None = None,
        trust_code: bool = False,
        known_units: Mapping[tuple[int, int], Any] | None = None,
        on_unit: Callable[[Any], None] | None = None,
        prepared: tuple[Any, list[Any]] | None = None,
    ) -> Any:
        from coherence.analysis.pipeline import assemble, check_request, prepare

        report = progress or (lambda fraction, stage: None)
        started = time.perf_counter()
        ray = self.connect()
        info, batches = prepare(request) if prepared is None else prepared
        check_request(request, info)
        S, B = len(request.checkpoints), len(batches)
        units = dict(known_units or {})
        todo = [(s, b) for s in range(S) for b in range(B) if (s, b) not in units]
        report(len(units) / (S * B), f"submitting {len(todo)} units to the Ray cluster")
        checkpoints, fingerprints = _ship_checkpoints(ray, request, info, {s for s, _ in todo})
        arrays = {
            b: ray.put({"inputs": batches[b].inputs.numpy(), "targets": batches[b].targets.numpy()})
            for b in sorted({b for _, b in todo})
        }
        pending = self._submit_units(ray, request, batches, todo, checkpoints, arrays, trust_code)
        devices: set[str] = set()
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    s, b = pending.pop(ref)
                    try:
                        unit, ran_on = self._unit_reply(ray, ref, request, s, b, fingerprints[s])
                    except ClusterError as error:
                        raise _naming_the_data(error, info, request, b) from None
                    units[s, b] = unit
                    devices.add(ran_on)
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

    def _submit_units(
        self,
        ray: Any,
        request: Any,
        batches: Sequence[Any],
        todo: Sequence[tuple[int, int]],
        checkpoints: Mapping[int, Any],
        arrays: Mapping[int, Any],
        trust_code: bool,
    ) -> dict[Any, tuple[int, int]]:
        """One task per missing unit (s, b), its checkpoint and batch by object reference:
        {task reference: (s, b)}."""
        names = [Path(c).name for c in request.checkpoints]
        task = _remote(ray, analysis_unit_task)
        base = {
            "driver_versions": worker_versions(),
            "request": request.to_dict(),
            "trust_code": trust_code,
            "threads": max(1, int(self.cpus)),
        }
        options = self._options(ray, request.device)
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
            submit = task.options(**options, name=label).remote
            pending[submit(meta, checkpoints[s], arrays[b])] = (s, b)
        return pending

    def _unit_reply(
        self, ray: Any, ref: Any, request: Any, s: int, b: int, fingerprint: str
    ) -> tuple[Any, str]:
        """The finished unit (s, b), checked to be that unit and stamped with the driver's
        checkpoint fingerprint, and where it ran ('<device> on <host>'); records its timing."""
        from coherence.analysis.results import UnitResult

        name = Path(request.checkpoints[s]).name
        where = f"unit (checkpoint {name}, trajectory {request.trajectories[b]})"
        reply = get_reply(ray, ref, where, retries=self.retries)
        with np.load(io.BytesIO(reply["npz"]), allow_pickle=False) as data:
            parts = {key: data[key] for key in data.files}
        unit = UnitResult.from_parts(parts, json.loads(reply["json"]))
        if (unit.checkpoint_index, unit.batch_index) != (s, b):
            raise ClusterError(f"{where}: the worker returned another unit")
        self.timings.append(
            {
                "unit": where,
                "host": reply["host"],
                "task_seconds": reply["seconds"],
                "compute_seconds": reply.get("compute_seconds"),
            }
        )
        device = f"{reply['device']} on {reply['host']}"
        return replace(unit, checkpoint_fingerprint=fingerprint), device

    # -------------------------------------------------------------------- training ----

    @staticmethod
    def _show_progress(ray: Any, board: Any, runs: Sequence[TrainRun], running: set[int]) -> None:
        """Forward what the running trainings posted to their progress callbacks."""
        watched = {str(i): run for i, run in enumerate(runs) if id(run) in running and run.progress}
        if not watched:
            return
        try:
            latest = ray.get(board.read.remote(), timeout=5)
        except Exception:  # progress is best effort: a slow board must not fail the runs
            return
        for name, (epoch, epochs, fraction, loss) in latest.items():
            if name in watched:
                watched[name].progress(epoch, epochs, fraction, loss)

    def train(self, runs: Sequence[TrainRun], *, log: Callable[[str], None] | None = None) -> None:
        """Every run as its own task, all at once; each checkpoint is written (one atomic
        set) as soon as its run finishes. A failed run does not stop the others."""
        say = log or (lambda message: None)
        if not runs:
            return
        from coherence.surrogates.training import check_checkpoint_folder, training_lock

        ray = self.connect()
        limit = env_number(SHIP_BYTES_ENV, 2.0 * 1024**3)
        task = _remote(ray, training_task)
        board = ray.remote(num_cpus=0)(ProgressBoard).remote()
        pending: dict[Any, TrainRun] = {}
        errors: list[ClusterError] = []
        heard = [0]  # log lines of the runs read so far
        # every run's checkpoint lock, as a local run holds it, from before the driver touches
        # the folder (recover, prune) until its files are written: a local `coherence train`
        # or another study into the same --out is refused, and so is one --out given twice
        held = contextlib.ExitStack()
        puts: dict[tuple[str, ...], Any] = {}  # one object-store copy of each dataset
        try:
            for index, run in enumerate(runs):
                check_checkpoint_folder(run.out)  # as a local run does: not into a dataset
                held.enter_context(training_lock(run.out))
                submitted = self._submit_training(ray, task, board, str(index), run, limit, puts)
                pending[submitted] = run
                say(f"submitted training {run.out.name} to the Ray cluster at {self.address}")
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
                self._show_progress(ray, board, runs, {id(r) for r in pending.values()})
                _show_lines(ray, board, runs, heard, say)
                for ref in ready:
                    run = pending.pop(ref)
                    try:
                        where = f"training {run.out.name}"
                        reply = get_reply(ray, ref, where, retries=self.retries)
                    except ClusterError as error:
                        errors.append(error)
                        say(str(error))
                        continue
                    _show_lines(ray, board, runs, heard, say)  # its last lines before its result
                    _save_training(run, reply, say)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            held.close()
            ray.kill(board)
        if errors:
            more = f" ({len(errors)} of {len(runs)} runs failed)" if len(errors) > 1 else ""
            raise ClusterError(f"{errors[0]}{more}")

    def _submit_training(
        self,
        ray: Any,
        task: Any,
        board: Any,
        name: str,
        run: TrainRun,
        limit: float,
        puts: dict[tuple[str, ...], Any],
    ) -> Any:
        """Submit one run: its dataset files (when at most ``limit`` bytes, else read on the
        node; put in the object store once for every run that reads the same files, ``puts``)
        and, to resume, its verified checkpoint set; returns the task reference."""
        from coherence.simulation.dataset import files_fingerprint
        from coherence.surrogates import checkpoint as ckpt
        from coherence.surrogates import snapshots

        paths, size = _dataset_files(Path(run.data), run.args.classes)
        shipped, expected = None, None
        if size <= limit:
            files = tuple(str(path) for _, path in sorted(paths.items()))
            if files not in puts:  # three seeds of a study: one copy, not three
                puts[files] = ray.put({rel: path.read_bytes() for rel, path in paths.items()})
            shipped = puts[files]
        else:  # read on the node: its copy must be this one (else the checkpoint records it)
            expected = {"files": sorted(paths), "fingerprint": files_fingerprint(paths.values())}
        ckpt.recover(run.out)
        resume = None
        if (run.out / ckpt.CONFIG_FILE).is_file():
            ckpt.verify(run.out)
            resume = _checkpoint_files(run.out, (*ckpt.SET_FILES, ckpt.MANIFEST_FILE))
        # as a local resume does: snapshots a killed run wrote past its saved history go
        # (the worker writes them again and sends them back)
        snapshots.prune_after(run.out, len(ckpt.read_history(run.out)) if resume else 0)
        meta = {
            "driver_versions": worker_versions(),
            "args": json.loads(json.dumps(run.args.to_dict())),
            "data_path": str(Path(run.data)),
            "data_name": Path(run.data).name,
            "out_name": run.out.name,
            "out_path": str(run.out),
            "data_expected": expected,
            "run": name,
            "threads": max(1, int(self.cpus)),
        }
        options = self._options(ray, run.args.device)
        submit = task.options(**options, name=f"coherence train {run.out.name}").remote
        return submit(meta, shipped, resume, board)


def _show_lines(
    ray: Any, board: Any, runs: Sequence[TrainRun], heard: list[int], say: Callable[[str], None]
) -> None:
    """Say the log lines the trainings posted since the last call (``heard[0]`` counts them),
    each under its run's name, as a local run says them: the memory warning before the first
    epoch is worth most while the run can still be stopped."""
    try:
        lines = ray.get(board.said.remote(heard[0]), timeout=5)
    except Exception:  # best effort, as progress is: a slow board must not fail the runs
        return
    from coherence.surrogates.training import WARNING

    heard[0] += len(lines)
    for name, message in lines:
        warning = message.startswith(WARNING)  # kept first: the CLI colours such a line
        text = f"training {runs[int(name)].out.name}: {message.removeprefix(WARNING)}"
        say(WARNING + text if warning else text)


def _save_training(run: TrainRun, reply: Mapping[str, Any], say: Callable[[str], None]) -> None:
    """Write a finished run's snapshots (each committed by one rename), then its checkpoint
    set atomically, as a local run orders them, and report its last epoch."""
    from coherence.surrogates import checkpoint as ckpt
    from coherence.surrogates import fileset, snapshots

    for epoch, files in sorted(reply.get("snapshots", {}).items()):
        snapshots.write_snapshot(run.out, int(epoch), files)
    fileset.write_set(run.out, reply["files"], {"epochs": reply["epochs"]}, ckpt.SET_FILES)
    if run.progress is not None:
        history = ckpt.read_history(run.out)
        loss = history[-1]["train_smse"] if history else float("nan")
        run.progress(run.args.epochs - 1, run.args.epochs, 1.0, loss)
    say(
        f"trained {run.out.name} on {reply['host']} in "
        f"{reply['seconds']:.0f} s ({plural(reply['epochs'], 'epoch')})"
    )
