"""Background jobs of other kinds than an analysis, on the analysis jobs' machinery.

A kind is a name, a JSON spec, a content key and a compute function that returns named arrays
plus a JSON object. ``JobRunner.submit_task`` stores the spec (``task:<key>``) and starts the
same detached worker (``--kind``), under the same per-key lock, compute slot, progress record
and cancel flag as an analysis; the result is stored as an npz + JSON artifact (never a
pickle) under the key, so a reload, a second tab or another visitor re-attaches to it.

Kinds: ``counterfactual`` (the Validation panel's check, METHOD.md §7): one perturbation of
one checkpoint along one example's preconditioned gradient; ``rollout`` (the Rollout panel,
METHOD.md §6.7): one-step and autoregressive errors of a model group's seeds over whole test
trajectories, and the rollout states the field viewer draws.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coherence.analysis.estimators import parse_estimator
from coherence.errors import RequestError

Progress = Callable[[float, str], None]
TASK_CODE_VERSION = "1"


@dataclass(frozen=True)
class TaskKind:
    """How to key, check and compute one kind of job."""

    name: str
    key_material: Callable[[dict[str, Any]], dict[str, Any]]  # validates the spec too
    compute: Callable[[dict[str, Any], Progress], tuple[dict[str, np.ndarray], dict[str, Any]]]


# ------------------------------------------------------------------- counterfactual ------

COUNTERFACTUAL_FIELDS = {
    "checkpoint": str,
    "data": str,
    "classes": list,
    "trajectory": int,
    "t_start": int,
    "n_steps": int,
    "perturbation": int,
    "response": str,
    "estimator": str,
    "damping": float,
    "rtol": (float, type(None)),
}


def counterfactual_spec(
    checkpoint: str | Path,
    data: str | Path,
    classes: tuple[str, ...] | list[str],
    trajectory: int,
    t_start: int,
    n_steps: int,
    perturbation: int,
    response: str,
    estimator: str,
    damping: float,
    rtol: float | None,
) -> dict[str, Any]:
    """The JSON spec of one counterfactual check (paths absolute)."""
    return {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "classes": list(classes),
        "trajectory": int(trajectory),
        "t_start": int(t_start),
        "n_steps": int(n_steps),
        "perturbation": int(perturbation),
        "response": str(response),
        "estimator": str(estimator),
        "damping": float(damping),
        "rtol": None if rtol is None else float(rtol),
    }


def _check_spec(spec: dict[str, Any]) -> None:
    for name, kind in COUNTERFACTUAL_FIELDS.items():
        if name not in spec or not isinstance(spec[name], kind) or isinstance(spec[name], bool):
            raise RequestError(f"counterfactual check: field {name!r} is missing or malformed")
    parse_estimator(spec["estimator"])
    n = len(spec["classes"]) * spec["n_steps"]
    if not 0 <= spec["perturbation"] < n:
        raise RequestError(
            f"counterfactual check: perturbation={spec['perturbation']}: choose 0..{n - 1}"
        )


def _counterfactual_material(spec: dict[str, Any]) -> dict[str, Any]:
    from coherence.analysis.batch import check_window
    from coherence.cache.keys import _checkpoint_digest, _open_dataset_memo

    _check_spec(spec)
    info = _open_dataset_memo(spec["data"])
    for class_name in spec["classes"]:
        info.file("test", class_name)  # raises, naming the available classes
    check_window(info, spec["t_start"], spec["n_steps"])
    fields = {k: v for k, v in spec.items() if k not in ("checkpoint", "data")}
    return {
        "spec": fields,
        "checkpoint": _checkpoint_digest(spec["checkpoint"]),
        "dataset": info.fingerprint(split="test", classes=tuple(spec["classes"])),
    }


def _counterfactual_compute(
    spec: dict[str, Any], progress: Progress
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import time

    import torch

    from coherence.analysis.batch import assemble_batch
    from coherence.analysis.pipeline import load_checked
    from coherence.analysis.verify import counterfactual_check
    from coherence.simulation.dataset import open_dataset

    started = time.perf_counter()
    progress(0.0, "loading the checkpoint and the batch")
    info = open_dataset(spec["data"])
    batch = assemble_batch(
        info, tuple(spec["classes"]), spec["trajectory"], spec["t_start"], spec["n_steps"]
    )
    net, _ = load_checked(
        spec["checkpoint"], info, torch.device("cpu"), classes=tuple(spec["classes"])
    )
    out = counterfactual_check(
        net,
        batch.inputs,
        batch.targets,
        perturbation=spec["perturbation"],
        estimator=spec["estimator"],
        response=spec["response"],
        damping=spec["damping"],
        rtol=spec["rtol"],
        progress=progress,
    )
    arrays = {
        "epsilons": np.asarray(out.epsilons, dtype=np.float64),
        "predicted": np.asarray(out.predicted, dtype=np.float64),
        "measured": np.asarray(out.measured, dtype=np.float64),
        "rel_errors": np.asarray(out.rel_errors, dtype=np.float64),
    }
    return arrays, {"seconds": time.perf_counter() - started, "spec": spec}


COUNTERFACTUAL = TaskKind("counterfactual", _counterfactual_material, _counterfactual_compute)


# ------------------------------------------------------------------------- rollout -------


def rollout_spec(
    checkpoints: tuple[str | Path, ...] | list[str | Path],
    data: str | Path,
    classes: tuple[str, ...] | list[str],
    trajectories: tuple[int, ...] | list[int],
) -> dict[str, Any]:
    """The JSON spec of one group's rollouts (paths absolute): every seed over whole test
    trajectories of the classes, from the first snapshot."""
    return {
        "checkpoints": [str(c) for c in checkpoints],
        "data": str(data),
        "classes": list(classes),
        "trajectories": [int(t) for t in trajectories],
    }


def _rollout_material(spec: dict[str, Any]) -> dict[str, Any]:
    from coherence.cache.keys import _checkpoint_digest, _open_dataset_memo

    fields = {"checkpoints": list, "data": str, "classes": list, "trajectories": list}
    for name, kind in fields.items():
        if not isinstance(spec.get(name), kind) or not spec[name]:
            raise RequestError(f"rollout: field {name!r} is missing or malformed")
    info = _open_dataset_memo(spec["data"])
    for class_name in spec["classes"]:
        info.file("test", class_name)  # raises, naming the available classes
    for index in spec["trajectories"]:
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise RequestError(f"rollout: trajectory {index!r} is not an index")
    return {
        "classes": spec["classes"],
        "trajectories": spec["trajectories"],
        "checkpoints": [_checkpoint_digest(c) for c in spec["checkpoints"]],
        "dataset": info.fingerprint(split="test", classes=tuple(spec["classes"])),
    }


def _rollout_compute(
    spec: dict[str, Any], progress: Progress
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays [S, C·B, H] (one_step, rollout) and [S, C·B, H + 1, F, H, W] (prediction,
    float32), rows class-major as the panel reads them."""
    import time

    import torch

    from coherence.analysis.pipeline import load_checked
    from coherence.simulation.dataset import open_dataset
    from coherence.surrogates.rollout import rollout_errors

    started = time.perf_counter()
    info = open_dataset(spec["data"])
    states = np.concatenate([info.load("test", c, spec["trajectories"]) for c in spec["classes"]])
    runs = []
    for s, path in enumerate(spec["checkpoints"]):
        progress(s / len(spec["checkpoints"]), f"rolling out {Path(path).name}")
        net, _ = load_checked(path, info, torch.device("cpu"), classes=tuple(spec["classes"]))
        runs.append(rollout_errors(net, torch.from_numpy(states).float()))
    arrays = {
        "one_step": np.stack([r.one_step for r in runs]).astype(np.float64),
        "rollout": np.stack([r.rollout for r in runs]).astype(np.float64),
        "prediction": np.stack([r.prediction for r in runs]).astype(np.float32),
    }
    return arrays, {"seconds": time.perf_counter() - started, "spec": spec}


ROLLOUT = TaskKind("rollout", _rollout_material, _rollout_compute)
KINDS: dict[str, TaskKind] = {COUNTERFACTUAL.name: COUNTERFACTUAL, ROLLOUT.name: ROLLOUT}


def kind(name: str) -> TaskKind:
    if name not in KINDS:
        raise RequestError(f"job kind {name!r}: choose one of {', '.join(KINDS)}")
    return KINDS[name]


def task_key(name: str, spec: dict[str, Any]) -> str:
    """sha256 of the kind, its key material (file contents, not paths) and code versions;
    validates the spec and that its inputs exist (RequestError / CheckpointError)."""
    import coherence
    from coherence.cache.keys import canonical_json

    material = {
        "kind": name,
        "material": kind(name).key_material(spec),
        "code_version": TASK_CODE_VERSION,
        "package_version": coherence.__version__,
    }
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()
