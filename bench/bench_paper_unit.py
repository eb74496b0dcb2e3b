"""One paper-scale analysis unit (METHOD.md §5): a paper-preset checkpoint (UNet 13.5M or ViT
4.5M parameters) on one batch of 3 classes × 16 transitions at 128² (N = 48), subspace, the
three responses or SMSE alone, the top eigenvalue as the dashboard asks for it. Measured:
seconds and peak memory (on CPU the peak of the tensors alive at once, counted op by op in a
second run, beside the RSS; on CUDA the allocated peak) in a fresh process, against
the cost estimate that `coherence analyze` and `coherence study` print (target: within 2×).

The checkpoint is trained for one epoch on a synthetic 128² dataset (the cost of a unit does
not depend on the weights' values). Run: python -m bench.bench_paper_unit [--arch unet]
[--steps 16] [--responses smse] [--device auto] [--tf32]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import RESULTS_DIR, drifting_euler_states, write_result
from bench.live_memory import LiveTensorBytes

CLASSES = ("CE-RP", "CE-CRP", "CE-RPUI")
RESOLUTION = 128
SNAPSHOTS = 21


def synthetic_states(n: int, seed: int) -> np.ndarray:
    """Positive Euler states (ρ, ρu, ρv, E) [n, 21, 4, 128, 128] that drift in time."""
    return drifting_euler_states(n, SNAPSHOTS, RESOLUTION, seed)


def build_workspace(root: Path, arch: str) -> tuple[Path, Path]:
    from coherence.simulation.wellformat import write_well_file
    from coherence.surrogates.training import TrainingArgs, train

    data = root / "datasets" / "paper_synthetic"
    times = np.linspace(0.0, 1.0, SNAPSHOTS)
    for c, name in enumerate(CLASSES):
        for s, split in enumerate(("train", "valid", "test")):
            write_well_file(
                data / "data" / split / f"{name}.hdf5",
                synthetic_states(1, seed=10 * c + s),
                times,
                family="euler",
                class_name=name,
                dataset_name="paper_synthetic",
            )
    out = root / "checkpoints" / f"{arch}_paper"
    args = TrainingArgs(arch=arch, preset="paper", epochs=1, batch_size=8, transitions=1)
    train(data, out, args)
    return data, out


def estimate(data: Path, checkpoint: Path, request_json: str) -> dict:
    """The figures `coherence analyze` prints before it starts (same function: the batch's
    forward timed on the device, scaled by the counted passes)."""
    from coherence.analysis.pipeline import load_checked, prepare
    from coherence.analysis.request import AnalysisRequest
    from coherence.cache.cost import estimate_job

    request = AnalysisRequest.from_dict(json.loads(request_json))
    info, batches = prepare(request)
    model, _ = load_checked(checkpoint, info, request.torch_device)
    cost = estimate_job(model, request, batches[0].inputs.to(request.torch_device)).cost
    return {
        "estimate_s": cost.seconds,
        "estimate_gib": cost.memory_bytes / 1024**3,
        "forward_s": cost.forward_seconds,
        "fits": cost.fits,
        "describe": cost.describe(),
    }


def child(request_json: str, count: bool) -> None:
    """Run the unit in this fresh process and print its seconds and peak memory as JSON;
    ``count``: the peak of its CPU tensors instead (``LiveTensorBytes``, which slows every op,
    so a run of its own)."""
    from coherence.analysis.pipeline import run_analysis
    from coherence.analysis.request import AnalysisRequest

    request = AnalysisRequest.from_dict(json.loads(request_json))
    on_gpu = request.torch_device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tensors = LiveTensorBytes() if count else contextlib.nullcontext()
    start = time.perf_counter()
    with tensors:
        result = run_analysis(request)
    seconds = time.perf_counter() - start
    if count:
        print(json.dumps({"peak_tensor_gib": tensors.peak / 1024**3}))
        return
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gpu = torch.cuda.max_memory_allocated() / 1024**3 if on_gpu else None
    diagnostics = result.diagnostics[0][0]
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_gib": peak / 1024**3,
                "rss_before_gib": baseline / 1024**3,
                "peak_gpu_gib": gpu,
                "rank": diagnostics.get("rank"),
                "jvp_method": diagnostics.get("jvp_method"),
            }
        )
    )


def run_child(request_json: str, *extra: str) -> dict:
    command = [sys.executable, "-m", "bench.bench_paper_unit", "--child", request_json, *extra]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def recorded_estimate(arch: str) -> dict:
    """Today's memory estimate of the paper unit of ``arch`` measured on a GPU (N = 48, all
    three responses, the default estimator then), recomputed here from the model's shapes
    (the estimate needs no GPU and no weights), beside the estimate and the allocated peak
    that run recorded (``paper_unit_<arch>_cuda.json``)."""
    from coherence.analysis.pipeline import estimate_cost
    from coherence.analysis.request import AnalysisRequest
    from coherence.surrogates.registry import build_model

    recorded = json.loads(RESULTS_DIR.joinpath(f"paper_unit_{arch}_cuda.json").read_text())
    run = recorded["rows"][0]
    model = build_model(arch, "paper", channels=4, resolution=RESOLUTION).eval()
    request = AnalysisRequest(
        checkpoints=("-",),
        data="-",
        classes=CLASSES,
        n_steps=run["N"] // len(CLASSES),
        trajectories=(0,),
        responses=tuple(run["responses"].split(",")),
        device="cpu",
        estimator="ekfac-krylov",  # what those runs used (the default then), depth 1
        depth=1,
    )
    example = torch.zeros(1, 4, RESOLUTION, RESOLUTION)
    estimate = estimate_cost(model, request, example).memory_bytes / 1024**3
    return {
        "arch": arch,
        "N": run["N"],
        "responses": run["responses"],
        "measured_gib": run["peak_gpu_gib"],
        "measured_on": recorded["machine"]["gpu"] or "cuda",
        "recorded_estimate_gib": run["estimate_gib"],
        "recorded_ratio": run["estimate_gib"] / run["peak_gpu_gib"],
        "estimate_gib": estimate,
        "ratio": estimate / run["peak_gpu_gib"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="unet", choices=("unet", "vit"))
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--responses", default="smse")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--tf32", action="store_true", help="keep TF32 on (COHERENCE_TF32=1): its speed on a GPU"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--recorded",
        action="store_true",
        help="recompute the memory estimate of the units measured on a GPU, no run",
    )
    options = parser.parse_args()
    if options.recorded:
        write_result(
            "paper_unit_memory_estimates",
            "Memory estimate of the paper units against their measured GPU peak",
            [recorded_estimate(arch) for arch in ("unet", "vit")],
            "estimate_gib: what `coherence analyze` estimates today (no GPU needed: shapes "
            "only), against measured_gib, the allocated peak recorded on the GPU "
            "(paper_unit_*_cuda.json), and recorded_estimate_gib, the estimate printed then. "
            "Since then the estimate counts the tangent program's kept values from its trace "
            "instead of a second copy of autograd's. Target: ratio within [0.5, 2], ≥ 1 "
            "preferred (a low estimate lets a job start that then runs out of memory).",
        )
        return
    if options.tf32:
        os.environ["COHERENCE_TF32"] = "1"  # the child inherits it
    if options.child is not None:
        child(options.child, options.count)
        return
    from coherence.analysis.request import AnalysisRequest

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        data, checkpoint = build_workspace(Path(tmp), options.arch)
        print(f"workspace built in {time.perf_counter() - started:.0f} s", flush=True)
        request = AnalysisRequest(
            checkpoints=(str(checkpoint),),
            data=str(data),
            classes=CLASSES,
            t_start=0,
            n_steps=options.steps,
            trajectories=(0,),
            responses=tuple(options.responses.split(",")),
            device=options.device,
        )
        request_json = json.dumps(request.to_dict())
        predicted = estimate(data, checkpoint, request_json)
        print(predicted["describe"], flush=True)
        row = {
            "arch": options.arch,
            "preset": "paper",
            "grid": f"{RESOLUTION}²",
            "N": request.n_examples,
            "responses": options.responses,
            "device": str(request.torch_device),
        }
        if not predicted["fits"]:
            row.update(estimate_s=predicted["estimate_s"], estimate_gib=predicted["estimate_gib"])
            row["measured_s"] = "refused: does not fit"
        else:
            measured = run_child(request_json)
            on_cpu = request.torch_device.type == "cpu"
            measured["peak_tensor_gib"] = (
                run_child(request_json, "--count")["peak_tensor_gib"] if on_cpu else None
            )
            print(measured, flush=True)
            row.update(
                estimate_s=predicted["estimate_s"],
                measured_s=measured["seconds"],
                time_ratio=predicted["estimate_s"] / measured["seconds"],
                estimate_gib=predicted["estimate_gib"],
                peak_rss_gib=measured["peak_rss_gib"],
                peak_gpu_gib=measured["peak_gpu_gib"],
                peak_tensor_gib=measured["peak_tensor_gib"],
                memory_ratio=predicted["estimate_gib"]
                / (measured["peak_gpu_gib"] or measured["peak_tensor_gib"]),
                rank=measured["rank"],
                jvp_method=measured["jvp_method"],
            )
    notes = (
        "Estimate = what `coherence analyze` prints before it starts: the counted forward-pass "
        "equivalents × the batch's forward timed on the device ÷ N (× GPU_PASS_SCALE on a "
        "GPU); memory from the parameter count, the bytes autograd saves for one example and the "
        "tangent program's traced values. Measured memory: CUDA's allocated peak, or on a CPU "
        "the peak of the tensors alive at once (bench.live_memory, a second run); RSS beside. "
        "Target: both ratios within [0.5, 2]. "
        + ("" if torch.cuda.is_available() else "No GPU was lent for this run: CPU figures only.")
    )
    on_gpu = row["device"].startswith("cuda")
    row["float32"] = "tf32" if options.tf32 else "ieee"
    write_result(
        f"paper_unit_{options.arch}"
        + ("_cuda" if on_gpu else "")
        + ("_tf32" if options.tf32 else ""),
        "Paper-scale analysis unit" + (" on the GPU" if on_gpu else ""),
        [row],
        notes,
    )


if __name__ == "__main__":
    main()
