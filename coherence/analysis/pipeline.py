"""Run an analysis request: checkpoints × batches → raw and standardized influence tensors.

For each checkpoint s and trajectory b: assemble the batch (METHOD.md §5), compute H for every
requested response in one pass (shared gradients and solve), standardize, and optionally the
top eigenvalue of η + λI. Results are shaped [S, B, T, C, T, C] (rows = response).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coherence.analysis import kfac, tangents
from coherence.analysis.autodiff import FlatModel, evaluation_mode
from coherence.analysis.batch import AnalysisBatch, assemble_batch, check_window
from coherence.analysis.diagnostics import TOP_EIGEN_TOL
from coherence.analysis.estimators import Estimator, parse_estimator
from coherence.analysis.influence import (
    EXTREME_DATA,
    ExtremeDataError,
    NonFiniteModelError,
    compute_influence,
    top_eigenvalue,
)
from coherence.analysis.observables import check_response_applies
from coherence.analysis.request import AnalysisRequest
from coherence.analysis.results import AnalysisResult, UnitResult
from coherence.analysis.standardization import standardize
from coherence.analysis.summaries import input_distances
from coherence.errors import RequestError
from coherence.probe import activation_bytes
from coherence.resources import USABLE_SHARE
from coherence.simulation.dataset import DatasetInfo, files_fingerprint, open_dataset
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates.footprint import available_bytes
from coherence.surrogates.snapshots import checkpoint_labels, display_name

Progress = Callable[[float, str], None]  # (fraction of the whole job, stage)


@dataclass(frozen=True)
class CostEstimate:
    """What one (checkpoint, batch) costs, to refuse jobs that cannot fit before starting.

    ``forward_passes`` counts one example's forward as the unit; with ``forward_seconds``
    measured on the device (``coherence.probe.probe_forward``) it gives ``seconds``.
    """

    n_examples: int
    n_params: int
    forward_passes: float  # forward-pass equivalents (one example each) per unit
    memory_bytes: int  # peak estimate
    available_bytes: int
    jobs: int  # checkpoints × batches
    forward_seconds: float | None = None  # one example's forward on the device, measured

    @property
    def fits(self) -> bool:
        return self.memory_bytes <= USABLE_SHARE * self.available_bytes

    @property
    def seconds_per_unit(self) -> float | None:
        if self.forward_seconds is None:
            return None
        return self.forward_passes * self.forward_seconds

    @property
    def seconds(self) -> float | None:
        """The whole job (every checkpoint × batch), when a forward was timed."""
        per_unit = self.seconds_per_unit
        return None if per_unit is None else per_unit * self.jobs

    def describe(self) -> str:
        gib = 1024**3
        timing = ""
        if self.seconds is not None:
            timing = f", ≈ {self.seconds_per_unit:.1f} s each, ≈ {self.seconds:.0f} s in all"
        return (
            f"{self.jobs} × (N = {self.n_examples} examples, P = {self.n_params:,} parameters): "
            f"≈ {self.forward_passes:.0f} forward-pass equivalents each{timing}, peak memory ≈ "
            f"{self.memory_bytes / gib:.2f} GiB of {self.available_bytes / gib:.1f} GiB available"
        )


# Costs in one example's forward pass (measured on the demo and paper presets, METHOD.md §4):
VJP_PASSES = 5.0  # a per-example gradient through vmap: 4–6 on the demo and paper UNets
VJP_CHUNK_BYTES = 512 * 2**20  # activations of one vmapped chunk of per-example gradients
EXTRA_RESPONSE_PASSES = 2.0  # each further response reuses the forward
JVP_PASSES = 2.2  # one tangent of the traced program, per example of the batch
PRIMAL_PASSES = 3.0  # the traced program's primal part, per example, once per unit
CG_ITERATIONS_QUOTED = 10  # cg's iterations are unknown in advance: quoted for 10
LANCZOS_STEPS = 10  # top eigenvalue of η + λI at tol 1e-4: 9 steps (demo UNet), 6 (demo ViT)
TOP_EIGEN_STEPS = 50  # Lanczos' cap; a unit that reaches it unconverged says so


def vjp_chunk_size(activation_bytes: int, responses: int, n: int) -> int | None:
    """Examples per vmapped per-example-gradient call, so one call's activations stay within
    VJP_CHUNK_BYTES (None: the whole batch at once). Measured on the paper UNet at 128²
    (130 MB of activations an example): 4 forwards per example in chunks of 2–4, 6 in a chunk
    of 8, and memory growing with the chunk; small models are unaffected (one chunk)."""
    chunk = max(1, VJP_CHUNK_BYTES // max(activation_bytes * responses, 1))
    return None if chunk >= n else int(chunk)


def solver_numbers(request: AnalysisRequest, n: int, p: int, example: torch.Tensor) -> int:
    """Numbers (multiply by the itemsize for bytes) alive at the solver's peak beyond G, g_A
    and one basis of N rows (counted by the caller).
    - krylov (depth d): the basis buffer of d·N rows, the solution and residual rows (2·N)
      and the d·N pushed tangents (N·D each); ekfac-krylov twice the buffers (span(G) is
      added to its first block);
    - deflated cg: while AQ is built, the basis (d·N rows), the basis construction's η q_j
      ((d − 1)·N), AQ (d·N), the start's solution and residual (2·N) and the pushed
      tangents; during cg, the basis and AQ beside cg's state (``block_cg``: y, r, d and up
      to five working blocks: 8·N rows);
    - cold cg: y, r, d and up to four working blocks (no projection): 7·N rows.
    Why: at paper size (P = 13M) each extra block of 48 rows is 2.5 GB in float32."""
    estimator, depth = parse_estimator(request.estimator), request.depth
    pushed = depth * n * n * example[0].numel()
    if estimator is Estimator.KRYLOV:
        return (depth + 1) * n * p + pushed
    if estimator is Estimator.EKFAC_KRYLOV:
        # blocks of up to 2N rows (span(G) beside M̃⁻¹G), and the factored metric: Q_A, Q_S
        # and Λ per layer, far below N·P
        return (2 * depth + 1) * n * p + 2 * pushed
    if estimator is Estimator.EKFAC:
        return n * p  # the solution rows; the factors are per layer, far below N·P
    if estimator is Estimator.CG:
        if request.cg_start != "cold":
            building = (3 * depth + 1) * n * p + pushed
            # preconditioned: z = M̃⁻¹r, one more block while iterating
            extra = 1 if request.cg_start == "preconditioned" else 0
            iterating = (2 * depth + 8 + extra) * n * p
            return max(building, iterating) - n * p
        return 7 * n * p
    return 0


def krylov_products(ranks: Sequence[int], n: int) -> tuple[int, int]:
    """Batch JVPs and VJPs of a Galerkin solve whose Krylov blocks have ``ranks`` rows (as
    ``diagnostics.block_ranks`` reports them): every row pushed once (a JVP), every block but
    the last pulled back once (η q_j: a VJP each), and the full-system residual of the N
    columns (N VJPs). With each block at its full width (N; 2N for ekfac-krylov) it is the
    bound the cost estimate counts."""
    return sum(ranks), sum(ranks[:-1]) + n


def estimate_cost(
    model: nn.Module,
    request: AnalysisRequest,
    example: torch.Tensor,
    forward_seconds: float | None = None,
    cg_iterations: int | None = None,
) -> CostEstimate:
    """Forward-pass equivalents per (checkpoint, batch), counted per example:
    N VJPs (3 each, +2 per extra response); subspace: the primal part (3 per example) and
    s ≤ N tangents through the whole batch (2.2 per example each, so ≈ 2.2 N² in all), plus
    N batch VJPs for its full-system residual (≈ 3 N²); krylov: depth × as many tangents and
    VJPs; cg: ``cg_iterations`` (default 10) × N columns × (JVP + VJP) through the batch
    (deflated start: plus the krylov solve of ``depth`` blocks and its AQ); ekfac: a forward
    and backward with hooks and one round of per-example VJPs (ekfac-krylov, whose blocks
    are 2N wide (``krylov_products``), and the preconditioned cg start add it to their
    solves; its memory is ``kfac.fit_bytes``); the top eigenvalue: a few Lanczos steps of one
    batch JVP + VJP. Memory: G, g_A and Q (P × N each), what the solver keeps beyond them
    (``solver_numbers``), and the larger of the per-example gradients' activations (≈ 3
    copies of one chunk's per response) and what the batch products hold
    (``batch_product_bytes``).
    """
    n = request.n_examples
    p = sum(t.numel() for t in model.parameters() if t.requires_grad)
    k = len(request.responses)
    itemsize = next(model.parameters()).element_size()
    estimator = parse_estimator(request.estimator)
    vjp_passes, solve_passes, lanczos = unit_passes(request, cg_iterations)
    gradient_bytes = (k + 2) * n * p * itemsize + solver_numbers(request, n, p, example) * itemsize
    one = activation_bytes(model, example[:1])
    chunk = vjp_chunk_size(one, k, n) or n
    preconditioned_cg = estimator is Estimator.CG and request.cg_start == "preconditioned"
    if estimator in (Estimator.EKFAC, Estimator.EKFAC_KRYLOV) or preconditioned_cg:
        gradient_bytes += kfac.fit_bytes(model, n, p, itemsize, chunk * one)
    # the batch products hold the VJP's graph and the tangent program's primal values at
    # once; the per-example gradients keep ≈ 3 copies of one chunk's, not at the same time
    solve_products = estimator not in (Estimator.EKFAC, Estimator.EUCLIDEAN)
    products = (
        batch_product_bytes(model, n, example, one)
        if solve_products or request.top_eigenvalue
        else 0
    )  # counted (and the program traced) only where the unit makes batch products
    activations = max(products if solve_products else 0, 3 * chunk * k * one)
    memory = max(gradient_bytes + activations, products)
    return CostEstimate(
        n_examples=n,
        n_params=p,
        forward_passes=vjp_passes + solve_passes + lanczos,
        memory_bytes=int(memory),
        available_bytes=available_bytes(request.torch_device),
        jobs=request.n_units,
        forward_seconds=forward_seconds,
    )


def batch_product_bytes(model: nn.Module, n: int, example: torch.Tensor, one: int) -> int:
    """Bytes the batch products (``BatchJacobian``) hold while a solve or Lanczos uses them:
    the VJP's retained graph (N × ``one``, what autograd saves for one example) beside the
    tangent program's primal values and one product's working values, both counted from the
    program's trace at this batch shape (traced here if not yet: 2–8 s for the demo and
    paper models on this project's 2-core box, cached for the analysis that follows in this
    process). Why not a multiple of ``one``: forward mode keeps 1.5–1.8× what autograd does
    on the demo and paper UNet and ViT, and counted as 1× the paper ViT's unit came out at
    43 GiB for the 58.6 GiB it took on an H200. A model torch cannot trace runs plain jvp,
    counted as one more copy of the graph."""
    batch = example[:1].expand(n, *example.shape[1:]).contiguous()
    with evaluation_mode(model):  # the program's key includes the mode, as the analysis runs it
        try:
            program = tangents.cached_program(FlatModel(model), batch)
        except tangents.TraceError:
            return 2 * n * one
    return n * one + program.boundary_bytes + program.tangent_bytes


def unit_passes(
    request: AnalysisRequest, cg_iterations: int | None = None
) -> tuple[float, float, float]:
    """Forward-pass equivalents of one (checkpoint, batch) in its three parts: the
    per-example gradients, the solve and the top eigenvalue's Lanczos (``estimate_cost``
    explains the counts; they depend on the request alone, not on the model)."""
    n = request.n_examples
    k = len(request.responses)
    vjp_passes = n * (VJP_PASSES + EXTRA_RESPONSE_PASSES * (k - 1))
    matvec = n * (JVP_PASSES + VJP_PASSES)  # one (η + λI) v through the batch
    estimator = parse_estimator(request.estimator)

    def galerkin(depth: int, width: int) -> float:
        """The traced primal part and the batch products of ``depth`` full blocks."""
        jvps, vjps = krylov_products([width] * depth, n)
        return n * PRIMAL_PASSES + n * (jvps * JVP_PASSES + vjps * VJP_PASSES)

    krylov = galerkin(request.depth, n)
    # EK-FAC's statistics: a forward and a backward with hooks, one round of per-example VJPs
    ekfac = n * (1 + VJP_PASSES + VJP_PASSES)
    solve_passes = {
        Estimator.SUBSPACE: galerkin(1, n),
        Estimator.KRYLOV: krylov,
        Estimator.EKFAC: ekfac,
        # its blocks are twice as wide: span(G) beside M̃⁻¹G, and each later block as wide
        Estimator.EKFAC_KRYLOV: ekfac + galerkin(request.depth, 2 * n),
        Estimator.CG: (cg_iterations or CG_ITERATIONS_QUOTED) * n * matvec
        + (krylov + n * n * VJP_PASSES if request.cg_start != "cold" else 0.0)
        + (ekfac if request.cg_start == "preconditioned" else 0.0),
        Estimator.EUCLIDEAN: 0.0,
    }[estimator]
    lanczos = LANCZOS_STEPS * matvec if request.top_eigenvalue else 0.0
    return vjp_passes, solve_passes, lanczos


def unit_seconds(
    request: AnalysisRequest, forward_seconds: float, cg_iterations: int | None = None
) -> float:
    """``estimate_cost``'s seconds per unit without its memory count (which may trace the
    model): the passes depend on the request alone, times one example's forward."""
    return sum(unit_passes(request, cg_iterations)) * forward_seconds


def named_by_files(
    error: ExtremeDataError, info: DatasetInfo, request: AnalysisRequest, trajectory: int
) -> ExtremeDataError:
    """``error`` led by the class files that hold the extreme values (``_extreme_files``):
    what a local run and the Ray driver both raise, where the unit knew only its arrays."""
    return ExtremeDataError(f"{_extreme_files(info, request, trajectory)}: {error}")


def _extreme_files(info: DatasetInfo, request: AnalysisRequest, trajectory: int) -> str:
    """Which of the request's class files hold the extreme values of ``trajectory`` (the
    file to re-import; a batch spans every class), read again on this error path only."""
    files = [
        str(info.file(request.split, c).path)
        for c in request.classes
        if np.abs(info.load(request.split, c, trajectories=[trajectory])).max() > EXTREME_DATA
    ]
    return f"{', '.join(files) or info.root}, trajectory {trajectory}"


def checkpoint_fingerprint(directory: str | Path) -> str:
    """Content hash of a checkpoint's config and weights."""
    directory = Path(directory)
    return files_fingerprint([directory / ckpt.CONFIG_FILE, directory / ckpt.WEIGHTS_FILE])


def check_checkpoint(
    directory: str | Path, info: DatasetInfo, split: str = "test", classes: Sequence[str] = ()
) -> None:
    """Refuse, from its config alone, a checkpoint made for a dataset of other channels,
    grid or physics, or for ``classes`` (those to analyse) of constants it never trained on
    (no weights are read: it runs before any estimate or load)."""
    config = ckpt.read_config(directory)
    ckpt.check_compatible(
        config,
        family=info.family.value,
        channels=info.channels,
        resolution=(info.height, info.width),
        where=f"checkpoint {display_name(directory)}",
        physics=info.physics(split, config.classes),
        class_physics=info.class_physics(split),
        classes=classes,
    )


def check_request(request: AnalysisRequest, info: DatasetInfo) -> None:
    """Everything about a request that configs and the dataset can refuse, at once and
    before the cost estimate (a refusal after it had kept the user waiting for nothing):
    the checkpoints as seeds of one model, each against the dataset, and every response
    against the dataset's channels. No model is loaded; the seeds' weights digests come
    from their manifests (a checkpoint saved without one has its weights file hashed)."""
    check_seeds(request.checkpoints)
    for response in request.responses:
        check_response_applies(response, len(info.channels))
    for directory in request.checkpoints:
        check_checkpoint(directory, info, request.split, request.classes)


def load_checked(
    directory: str | Path,
    info: DatasetInfo,
    device: torch.device,
    trust_code: bool = False,
    split: str = "test",
    classes: Sequence[str] = (),
) -> tuple[nn.Module, ckpt.CheckpointConfig]:
    """Load a checkpoint and refuse it for a dataset of other channels or grid, for
    ``classes`` of constants it never trained on, or when its files are not the set its
    manifest records (weights changed after the save gave a result, and a cache entry, for
    weights nobody trained). Every job that runs a checkpoint loads it here: the rollouts
    and the counterfactual check loaded it bare, and rolled out weights the analysis
    refused."""
    ckpt.verify(directory)
    check_checkpoint(directory, info, split, classes)
    return ckpt.load(directory, device=device, trust_code=trust_code)


def _model_differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    """'channels 4 vs 3, base_width 16 vs 32': the settings two checkpoints' model configs
    differ in, nested ones by their own name (two demo UNets of CE and NS data were said to
    differ in "architecture or size", then in a "config" whose shown part was the same)."""

    def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in config.items():
            name = key if prefix in ("", "config.") else prefix + key
            if isinstance(value, dict):
                out |= flat(value, f"{name}.")
            else:
                out[name] = value
        return out

    def shown(value: Any) -> str:
        text = "absent" if value is _ABSENT else json.dumps(value, default=str)
        return text if len(text) <= 40 else text[:39] + "…"

    fa, fb = flat(a), flat(b)
    keys = [k for k in sorted({*fa, *fb}) if fa.get(k, _ABSENT) != fb.get(k, _ABSENT)]
    parts = [f"{k} {shown(fa.get(k, _ABSENT))} vs {shown(fb.get(k, _ABSENT))}" for k in keys[:3]]
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return "they differ in " + ", ".join(parts) + more if parts else "other settings"


_ABSENT = object()  # a setting one config lacks (None is a value)


def check_seeds(checkpoints: Sequence[str]) -> None:
    """An analysis pools its checkpoints as seeds of one model: refuse two architectures or
    sizes (a UNet and a ViT gave one result, their difference read as the spread across
    seeds), two training recipes (another epoch, learning rate, …: a snapshot of epoch 1
    beside the trained weights pooled training's effect into the seeds' spread), and one
    model twice (a copy under another name)."""
    first, weights, recipes = None, {}, []
    for directory in checkpoints:
        name = display_name(directory)
        model = ckpt.read_config(directory).model
        if first is None:
            first = (name, model)
        elif model != first[1]:
            raise RequestError(
                f"checkpoints {first[0]} ({first[1].get('arch')}) and {name} "
                f"({model.get('arch')}) are not seeds of one model "
                f"({_model_differences(first[1], model)}); analyse each model on its own, or "
                "compare them in the dashboard"
            )
        recipe = ckpt.training_recipe(directory)
        # against every earlier one: a first checkpoint that records no recipe is no
        # evidence about the others
        for other, theirs in recipes:
            if differ := _recipe_differences(theirs, recipe):
                raise RequestError(
                    f"checkpoints {other} and {name} were trained differently ({differ}), so "
                    "they are not seeds of one model: pooled, the difference reads as spread "
                    "across seeds; give checkpoints of one recipe (for one run across epochs, "
                    "the dashboard's Training dynamics panel, or each epoch on its own)"
                )
        recipes.append((name, recipe))
        digest = ckpt.weights_digest(directory)
        if digest in weights:
            raise RequestError(
                f"checkpoints {weights[digest]} and {name} hold the same weights (one is a "
                "copy of the other): pooled, one model counts as two seeds and the spread "
                "across seeds shrinks; analyse one of them, or a model trained with another "
                "--seed"
            )
        weights[digest] = name


def _recipe_differences(a: dict, b: dict) -> str:
    """``epochs 1 vs 12; lr 0.001 vs 0.0005``: the recipe fields both record that differ
    (a field one checkpoint does not record, an imported one's, is no evidence)."""
    return "; ".join(f"{k} {a[k]} vs {b[k]}" for k in a if k in b and a[k] != b[k])


def prepare(
    request: AnalysisRequest, info: DatasetInfo | None = None
) -> tuple[DatasetInfo, list[AnalysisBatch]]:
    """Open the dataset (unless ``info`` is it, already opened) and assemble every batch
    (fails fast on bad classes or windows)."""
    info = open_dataset(request.data) if info is None else info
    check_window(info, request.t_start, request.n_steps)
    batches = [
        assemble_batch(
            info, request.classes, b, request.t_start, request.n_steps, split=request.split
        )
        for b in request.trajectories
    ]
    return info, batches


def compute_unit(
    model: nn.Module,
    batch: AnalysisBatch,
    request: AnalysisRequest,
    s: int,
    b: int,
    *,
    progress: Callable[[float, str], None] | None = None,
) -> UnitResult:
    """One (checkpoint s, batch b): H for every response in one pass, standardized, the
    subspace spectrum and (if asked) the top eigenvalue of η + λI. Pure computation on the
    model's device: the same function runs in this process, a job worker or a cluster task."""
    forward = progress or (lambda fraction, stage: None)
    passes = unit_passes(request)
    # the Lanczos steps' share of the unit (most of a euclidean one, which has no solve):
    # reported at a fixed 99% they held the bar there for most of such a unit
    lanczos_share = passes[2] / max(sum(passes), 1e-12)

    def report(fraction: float, stage: str) -> None:
        forward(fraction * (1 - lanczos_share), stage)

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    T, C = request.n_steps, len(request.classes)
    inputs, targets = batch.inputs.to(device, dtype), batch.targets.to(device, dtype)
    chunk = vjp_chunk_size(
        activation_bytes(model, inputs[:1]), len(request.responses), inputs.shape[0]
    )
    result = compute_influence(
        model,
        inputs,
        targets,
        response=request.responses,
        estimator=request.estimator,
        damping=request.damping,
        rtol=request.rtol,
        energy_threshold=request.resolved_energy_threshold,
        depth=request.depth,
        cg_start=request.cg_start,
        max_iter=request.max_iter,
        chunk_size=chunk,
        progress=report,
    )
    H, H_std = {}, {}
    for response, matrix in result.H_by_response.items():
        H[str(response)] = matrix.double().cpu().numpy().reshape(T, C, T, C)
        H_std[str(response)] = standardize(matrix).double().cpu().numpy().reshape(T, C, T, C)
    top, diagnostics = float("nan"), result.diagnostics.to_dict()
    if request.top_eigenvalue:
        forward(1 - lanczos_share, "top eigenvalue (Lanczos)")
        found = top_eigenvalue(
            model, inputs, damping=request.damping, iters=TOP_EIGEN_STEPS, tol=TOP_EIGEN_TOL
        )
        top = found.value
        diagnostics["top_eigenvalue_bound"] = found.bound / abs(found.value)  # relative
        diagnostics["top_eigenvalue_steps"] = found.steps
    spectrum = np.asarray(result.diagnostics.subspace_eigenvalues or (), dtype=np.float64)
    return UnitResult(
        checkpoint_index=s,
        batch_index=b,
        H=H,
        H_std=H_std,
        top_eigenvalue=top,
        spectrum=spectrum,
        diagnostics=diagnostics,
    )


def assemble(
    request: AnalysisRequest,
    info: DatasetInfo,
    batches: list[AnalysisBatch],
    units: list[UnitResult],
    *,
    device: str,
    seconds: float,
) -> AnalysisResult:
    """Stack the units of a request (any order, each exactly once) into its result."""
    S, B = len(request.checkpoints), len(batches)
    T, C, N = request.n_steps, len(request.classes), request.n_examples
    by_position = {(u.checkpoint_index, u.batch_index): u for u in units}
    missing = [(s, b) for s in range(S) for b in range(B) if (s, b) not in by_position]
    if missing or len(units) != S * B:
        raise RequestError(f"units {missing} of the analysis are missing or repeated")
    H = {r: np.zeros((S, B, T, C, T, C)) for r in request.responses}
    H_std = {r: np.zeros((S, B, T, C, T, C)) for r in request.responses}
    tops = np.full((S, B), np.nan)
    spectra = np.full((S, B, N), np.nan)
    diagnostics = [[by_position[s, b].diagnostics for b in range(B)] for s in range(S)]
    fingerprints = {}
    labels = checkpoint_labels(request.checkpoints)
    for (s, b), unit in by_position.items():
        for response in request.responses:
            H[response][s, b] = unit.H[response]
            H_std[response][s, b] = unit.H_std[response]
        tops[s, b] = unit.top_eigenvalue
        spectra[s, b, : len(unit.spectrum)] = unit.spectrum
        if unit.checkpoint_fingerprint:
            fingerprints[labels[s]] = unit.checkpoint_fingerprint
    distances = input_distances(np.stack([batch.inputs.double().numpy() for batch in batches]))
    provenance = {
        "checkpoint_fingerprints": fingerprints,
        "dataset_fingerprint": info.fingerprint(split=request.split, classes=request.classes),
        "dataset_name": info.name,
        "device": device,
        "seconds": seconds,
        "versions": ckpt.package_versions(),
    }
    return AnalysisResult(
        request=request,
        H=H,
        H_std=H_std,
        steps=np.asarray(batches[0].steps),
        times=np.asarray(batches[0].times),
        classes=tuple(request.classes),
        checkpoints=labels,
        distances=distances,
        top_eigenvalues=tops,
        subspace_spectra=spectra,
        diagnostics=diagnostics,
        provenance=provenance,
    )


def run_analysis(
    request: AnalysisRequest,
    *,
    progress: Progress | None = None,
    trust_code: bool = False,
    known_units: Mapping[tuple[int, int], UnitResult] | None = None,
    on_unit: Callable[[UnitResult], None] | None = None,
    prepared: tuple[DatasetInfo, list[AnalysisBatch]] | None = None,
) -> AnalysisResult:
    """Compute the whole request here, unit by unit; ``progress(fraction, stage)`` after each
    step. Each checkpoint is loaded once for all its batches. ``known_units`` ((s, b) → unit,
    e.g. from the cache) are reused, not recomputed; ``on_unit`` sees each new unit as soon
    as it is done (the job runner stores it, so a killed or cancelled job resumes there).
    ``prepared``: the request's ``prepare`` when the caller already made it (not again)."""
    report = progress or (lambda fraction, stage: None)
    started = time.perf_counter()
    info, batches = prepare(request) if prepared is None else prepared
    check_request(request, info)
    device = request.torch_device
    S, B = len(request.checkpoints), len(batches)
    units = dict(known_units or {})
    checked = False
    for s, directory in enumerate(request.checkpoints):
        if all((s, b) in units for b in range(B)):
            continue
        name = display_name(directory)
        report(len(units) / (S * B), f"{name}: loading the checkpoint")
        model, _ = load_checked(
            directory,
            info,
            device,
            trust_code=trust_code,
            split=request.split,
            classes=request.classes,
        )
        fingerprint = checkpoint_fingerprint(directory)
        dtype = next(model.parameters()).dtype
        if not checked:
            checked = True
            cost = estimate_cost(model, request, batches[0].inputs.to(device, dtype))
            if not cost.fits:
                raise RequestError(
                    f"this analysis would not fit in memory ({cost.describe()}); shrink the "
                    "time window or the number of classes, or use a device with more memory"
                )
        for b, batch in enumerate(batches):
            if (s, b) in units:
                continue
            done = len(units)

            def inner(
                fraction: float, stage: str, done: int = done, b: int = b, name: str = name
            ) -> None:
                report((done + fraction) / (S * B), f"{name}, batch {b + 1}/{B}: {stage}")

            inner(0.0, "forward pass and per-example gradients")
            try:
                unit = compute_unit(model, batch, request, s, b, progress=inner)
            except NonFiniteModelError as error:
                raise NonFiniteModelError(f"checkpoint {directory}: {error}") from None
            except ExtremeDataError as error:
                raise named_by_files(error, info, request, request.trajectories[b]) from None
            unit = replace(unit, checkpoint_fingerprint=fingerprint)
            units[s, b] = unit
            if on_unit is not None:
                on_unit(unit)
            report(len(units) / (S * B), f"{name}, batch {b + 1}/{B} done")
    report(1.0, "assembling the result (input distances)")
    seconds = time.perf_counter() - started
    return assemble(
        request, info, batches, list(units.values()), device=str(device), seconds=seconds
    )
