"""Our EK-FAC (``ekfac``) and the default beside Kronfluence's EK-FAC, the peer issue 14 quotes.

Issue 14 measured Kronfluence's EK-FAC (Pearson 0.90 on a 1.8k-parameter model; 3.9 s on the
demo UNet) and asked for a default more faithful and faster than it. Our comparisons use our
own EK-FAC (``coherence.analysis.kfac``); this benchmark checks that reimplementation against
the library itself, side by side in one run:

- ``--part fidelity``: on the four small dense-reference models (8², N = 48, P = 0.9k–1.8k;
  the models of ``bench_fidelity.py``), the Pearson / median row Spearman of each estimator's
  standardised Ĥ against the exact float64 (η + λI)⁻¹ solve, λ = 1e-4 and 1e-2;
- ``--part cost``: seconds on the trained demo checkpoints (N = 48 at 32²), best of two.

The mapping onto Kronfluence: the train loss is ⟨r_C, f(x)⟩ with the SMSE residual r_C
frozen (its per-example gradient is our g_B(n) = J_nᵀ r_C(n)), the measurement the same, and
the sampled loss ½‖f − (f + ε)‖² with ε ~ N(0, I), whose gradients' covariance is J_nᵀJ_n:
Kronfluence's Gauss–Newton matches η = Σ_n J_nᵀJ_n up to its mean over the N examples, so its
damping is λ / N. Kronfluence unfolds convolutions with zero padding whatever their
``padding_mode``; every circular convolution is therefore rewritten as an explicit circular
pad followed by an unpadded convolution (the same function, checked) before it sees the model.
Kronfluence tracks Linear and Conv2d layers only, so normalisation parameters are left out of
its Ĥ (our ``ekfac`` keeps a diagonal for them).

Kronfluence is not a dependency of the product: its own requirements pull torchvision and,
through it, a CUDA build of another torch. ``make bench-peers`` installs it and its imports
with ``--no-deps`` into ``.peers/`` (``bench/requirements-peers.txt``) and runs this script.

Run: ``PYTHONPATH=.:.peers python -m bench.bench_kronfluence [--part fidelity|cost|all]
[--checkpoint ARCH=DIR]`` (the project first: Kronfluence's wheel ships a ``tests`` package)
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from bench.bench_fidelity import MODELS
from bench.bench_influence import euler_batch
from bench.common import ratio_rows, write_result
from bench.reference_rows import agreement
from coherence.analysis.influence import compute_influence
from coherence.analysis.observables import smse_residual
from coherence.analysis.standardization import standardize
from coherence.surrogates import checkpoint as ckpt
from tests.analysis.fixtures import train_small

DAMPINGS = (1e-4, 1e-2)


class _PaddedConv(nn.Module):
    """A circular (or reflect/replicate) pad, then the convolution without padding: the same
    function, in the form Kronfluence's patch unfolding reads correctly."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        ph, pw = conv.padding  # type: ignore[misc]
        self.pad = (pw, pw, ph, ph)
        self.mode = conv.padding_mode
        self.conv = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=0,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        ).to(conv.weight)
        self.conv.load_state_dict(conv.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(x, self.pad, mode=self.mode))


def explicit_padding(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose non-zero-padded convolutions pad explicitly."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Conv2d) and child.padding_mode != "zeros":
                setattr(module, name, _PaddedConv(child))
    return model


class _Pairs(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _task() -> Any:
    from kronfluence.task import Task

    class SmseTask(Task):
        """g(n) = J_nᵀ r_C(n) with r_C frozen; the sampled loss's gradients have covariance
        J_nᵀJ_n (the Gauss–Newton metric, as η)."""

        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> Any:
            x, y = batch
            prediction = model(x)
            if sample:
                noise = torch.randn_like(prediction)
                return 0.5 * (prediction - (prediction.detach() + noise)).pow(2).sum()
            return (smse_residual(prediction.detach(), y) * prediction).sum()

        def compute_measurement(self, batch: Any, model: nn.Module) -> Any:
            return self.compute_train_loss(batch, model)

    return SmseTask()


def kronfluence_ekfac(model: nn.Module, x: torch.Tensor, y: torch.Tensor, damping: float) -> Any:
    """Kronfluence's EK-FAC pairwise scores [N, N] (query r, train p) for η + λI, and seconds."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    torch.manual_seed(0)
    rewritten = explicit_padding(model).eval()
    with torch.no_grad():  # the rewrite keeps the function
        assert torch.allclose(rewritten(x), model.eval()(x), atol=1e-5)
    model, dtype = rewritten, next(rewritten.parameters()).dtype
    data = _Pairs(x, y)
    factor_args = FactorArguments(
        strategy="ekfac",
        activation_covariance_dtype=dtype,
        gradient_covariance_dtype=dtype,
        per_sample_gradient_dtype=dtype,
        lambda_dtype=dtype,
    )
    score_args = ScoreArguments(
        damping_factor=damping / len(x),  # Kronfluence's metric is η's mean over examples
        per_sample_gradient_dtype=dtype,
        precondition_dtype=dtype,
        score_dtype=dtype,
    )
    with tempfile.TemporaryDirectory() as out:
        clock = time.perf_counter()
        task = _task()
        prepared = prepare_model(model, task)
        analyzer = Analyzer(
            "coherence",
            prepared,
            task,
            cpu=not x.is_cuda,
            disable_tqdm=True,
            output_dir=out,
            log_level=logging.WARNING,
        )
        analyzer.fit_all_factors(
            "f",
            data,
            per_device_batch_size=len(x),
            factor_args=factor_args,
            overwrite_output_dir=True,
        )
        analyzer.compute_pairwise_scores(
            "s",
            "f",
            data,
            data,
            per_device_query_batch_size=len(x),
            per_device_train_batch_size=len(x),
            score_args=score_args,
            overwrite_output_dir=True,
        )
        scores = analyzer.load_pairwise_scores("s")["all_modules"]
        seconds = time.perf_counter() - clock
    return scores.double(), seconds


def fidelity_rows() -> list[dict[str, Any]]:
    """Kronfluence's EK-FAC, ours and the default against the exact solve (docstring)."""
    rows = []
    for hidden, seed in MODELS:
        small = train_small(hidden, seed)
        p = small.reference.jac.shape[2]
        for damping in DAMPINGS:
            exact = standardize(small.reference.full("smse", damping))
            kron, seconds = kronfluence_ekfac(small.model, small.inputs, small.targets, damping)
            found = {"kronfluence ekfac": (kron, seconds)}
            for estimator in ("ekfac", "ekfac-krylov"):
                clock = time.perf_counter()
                result = compute_influence(
                    small.model,
                    small.inputs,
                    small.targets,
                    estimator=estimator,
                    damping=damping,
                )
                found[estimator] = (result.H_by_response["smse"], time.perf_counter() - clock)
            for setting, (h, seconds) in found.items():
                pearson, spearman = agreement(standardize(h), exact)
                rows.append(
                    {
                        "P": p,
                        "seed": seed,
                        "lambda": damping,
                        "setting": setting,
                        "pearson": pearson,
                        "spearman": spearman,
                        "seconds": seconds,
                    }
                )
                print(rows[-1], flush=True)
            ours = standardize(found["ekfac"][0])
            rows[-3]["pearson_vs_ours"] = agreement(standardize(kron), ours)[0]
    return rows


def cost_rows(checkpoints: dict[str, str]) -> list[dict[str, Any]]:
    """Seconds on each trained demo checkpoint, best of two after a warm-up (docstring)."""
    x, y = euler_batch()
    rows = []
    for arch in ("unet", "vit"):
        model, _ = ckpt.load(checkpoints.get(arch, f"workspace/checkpoints/{arch}_demo_s10"))
        model.eval()
        compute_influence(model, x, y, estimator="subspace")  # trace once, as a job does
        kronfluence_ekfac(model, x, y, 1e-4)
        timings: dict[str, float] = {}
        for setting in ("kronfluence ekfac", "ekfac", "ekfac-krylov"):
            best = float("inf")
            for _ in range(2):
                if setting.startswith("kronfluence"):
                    seconds = kronfluence_ekfac(model, x, y, 1e-4)[1]
                else:
                    clock = time.perf_counter()
                    compute_influence(model, x, y, estimator=setting)
                    seconds = time.perf_counter() - clock
                best = min(best, seconds)
            timings[setting] = best
        rows += ratio_rows(f"{arch} (trained)", timings, "kronfluence ekfac", "x_kronfluence")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("fidelity", "cost", "all"), default="all")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="ARCH=DIR")
    args = parser.parse_args()
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    if args.part in ("fidelity", "all"):
        write_result(
            "kronfluence_fidelity",
            "Our EK-FAC beside Kronfluence's on the small dense-reference models (issue 14)",
            fidelity_rows(),
            "Pearson / median row Spearman of standardised Ĥ (SMSE) vs the exact float64 "
            "(η + λI)⁻¹ solve; Kronfluence 1.0.1's EK-FAC at damping λ/N (its metric is η's "
            "mean), circular convolutions rewritten as explicit pads; pearson_vs_ours: "
            "Kronfluence's Ĥ against our ekfac's. seconds include Kronfluence's disk I/O.",
        )
    if args.part in ("cost", "all"):
        write_result(
            "kronfluence_cost",
            "Seconds beside Kronfluence's EK-FAC on the trained demo models (issue 14)",
            cost_rows(checkpoints),
            "N = 48 at 32², best of two after a warm-up; Kronfluence 1.0.1 EK-FAC (fit and "
            "pairwise scores, factors and scores written to a temporary folder as it does).",
        )


if __name__ == "__main__":
    main()
