"""Kronecker-factored eigenbasis approximation of η (EK-FAC) and its damped inverse.

EK-FAC (George et al. 2018; Grosse et al. 2023, the estimator Kronfluence ships) approximates
η = Σ_n J_nᵀ J_n layer by layer. For a Linear or Conv2d layer with weight matrix W [out, in']
(bias as an extra input column, Conv2d inputs unfolded into patches), the Gauss–Newton block
is ≈ A ⊗ S with A = Σ ã ãᵀ over the layer's inputs (examples × positions) and S = Σ δ δᵀ over
the gradients at its outputs; the eigenvectors of A and S define a basis Q_S ⊗ Q_A, and the
eigenvalues are then *corrected* to η's diagonal in that basis,
Λ[i, j] = Σ_n ((Q_Sᵀ ∇W_n Q_A)[i, j])², with ∇W_n from Gaussian cotangents (below): with
exact statistics the approximation is exact along every basis direction and only the
off-diagonal couplings (and those between layers) are dropped. Parameters outside such layers
(normalisation scales, position embeddings) get η's diagonal, estimated the same way. With
``SAMPLES`` = 1 every one of these is an unbiased but noisy estimate (a review's small model:
median relative error ≈ 0.2–0.3 per corrected eigenvalue), which the fidelity measurements
include.

Why the Gauss–Newton quantities come from random cotangents: J_nᵀ J_n = E_v[J_nᵀ v vᵀ J_n]
for v ~ N(0, I) over the outputs, so ``samples`` backward passes of Gaussian cotangents give
unbiased A-side, S-side and diagonal statistics without the D backward passes the exact
per-output Jacobian would need. The generator is seeded: the same (model, batch) gives the
same factors, so a cached result is reproducible.

Cost on a batch of N: one forward with hooks and ``samples`` backward passes (the factors),
``samples`` rounds of per-example VJPs (the corrected eigenvalues), eigendecompositions of
in'×in' and out×out matrices per layer; applying (η̃ + λI)⁻¹ to K rows costs four small
matrix products per layer and row, no model evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coherence.analysis.autodiff import FlatModel, per_example_vjps

# Gaussian cotangent fields (the Monte Carlo estimate of η's statistics): on the four small
# dense-reference models, 1, 4 and 16 gave fidelities within 0.005 of each other
# (changing SAMPLES or SEED changes every EK-FAC result: bump keys.ANALYSIS_CODE_VERSION)
SAMPLES = 1
SEED = 0


@dataclass(frozen=True)
class KroneckerBlock:
    """One Linear/Conv2d layer: where its weight (and bias) sit in θ, and the eigenbasis
    Q_S [out, out] ⊗ Q_A [in', in'] with the corrected eigenvalues Λ [out, in']."""

    weight: slice
    bias: slice | None
    out_features: int
    qa: Tensor
    qs: Tensor
    eigenvalues: Tensor

    def columns(self, rows: Tensor) -> Tensor:
        """Rows [K, P] → this layer's weight matrices [K, out, in'] (bias as last column)."""
        w = rows[:, self.weight].reshape(len(rows), self.out_features, -1)
        if self.bias is None:
            return w
        return torch.cat([w, rows[:, self.bias].unsqueeze(2)], dim=2)

    def write(self, rows: Tensor, matrices: Tensor) -> None:
        """Inverse of ``columns``: matrices [K, out, in'] written into rows [K, P]."""
        k = len(rows)
        if self.bias is None:
            rows[:, self.weight] = matrices.reshape(k, -1)
            return
        rows[:, self.weight] = matrices[:, :, :-1].reshape(k, -1)
        rows[:, self.bias] = matrices[:, :, -1]


@dataclass(frozen=True)
class EigenbasisMetric:
    """η̃ ≈ η: Kronecker-factored eigenbasis blocks plus an exact diagonal for the rest."""

    blocks: tuple[KroneckerBlock, ...]
    diagonal_index: Tensor  # (m,) positions in θ outside every block
    diagonal: Tensor  # (m,) η's diagonal there
    probes: int  # cotangent fields the statistics were summed over

    def _map(self, rows: Tensor, damping: float | None) -> Tensor:
        """η̃ rows (damping None) or (η̃ + λI)⁻¹ rows, in the rows' dtype."""
        out = torch.empty_like(rows)
        for block in self.blocks:
            qa, qs = block.qa.to(rows.dtype), block.qs.to(rows.dtype)
            lam = block.eigenvalues.to(rows.dtype)
            rotated = qs.T @ block.columns(rows) @ qa
            scaled = rotated * lam if damping is None else rotated / (lam + damping)
            block.write(out, qs @ scaled @ qa.T)
        index = self.diagonal_index
        d = self.diagonal.to(rows.dtype)
        out[:, index] = rows[:, index] * d if damping is None else rows[:, index] / (d + damping)
        return out

    def solve(self, rows: Tensor, damping: float) -> Tensor:
        """(η̃ + λI)⁻¹ applied to each row of rows [K, P]."""
        return self._map(rows, damping)

    def apply(self, rows: Tensor) -> Tensor:
        """η̃ applied to each row of rows [K, P] (tests compare it with η)."""
        return self._map(rows, None)


def _patches(module: nn.Module, x: Tensor) -> Tensor:
    """A layer's inputs as rows ã [N, L, in'] matching its weight matrix's columns."""
    if isinstance(module, nn.Linear):
        return x.reshape(x.shape[0], -1, x.shape[-1])
    assert isinstance(module, nn.Conv2d)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    padded = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    cols = F.unfold(padded, module.kernel_size, module.dilation, 0, module.stride)
    return cols.transpose(1, 2)  # (N, L, C_in·kh·kw)


def _output_rows(module: nn.Module, delta: Tensor) -> Tensor:
    """Gradients at a layer's outputs as rows δ [N, L, out]."""
    if isinstance(module, nn.Linear):
        return delta.reshape(delta.shape[0], -1, delta.shape[-1])
    return delta.flatten(2).transpose(1, 2)


def _supported(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _with_bias(rows: Tensor, bias: bool) -> Tensor:
    return torch.cat([rows, rows.new_ones(*rows.shape[:-1], 1)], dim=-1) if bias else rows


def _param(module_name: str, attribute: str) -> str:
    """The parameter's name in ``named_parameters`` (the root module has no prefix)."""
    return f"{module_name}.{attribute}" if module_name else attribute


def _factors(
    fm: FlatModel,
    inputs: Tensor,
    layers: dict[str, tuple[nn.Module, bool]],
    cotangents: list[Tensor],
    chunk_size: int | None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """A = Σ ã ãᵀ and S = Σ over cotangents of Σ δ δᵀ per layer (``layers``: name → (module,
    bias column)), from a forward with hooks and one backward per cotangent, over chunks of
    ``chunk_size`` examples (None: all at once) so that one chunk's graph and patches are
    alive at a time. Each chunk's products run in the model's dtype (float32 BLAS: 2× faster
    on the demo UNet, whose patches are 49k × 1153 at N = 48); the sum over chunks and calls
    is float64. Exactness of A and S is not needed: Λ is corrected from per-example
    gradients."""
    a_side: dict[str, Tensor] = {}
    s_side: dict[str, Tensor] = {}
    n = inputs.shape[0]
    step = n if chunk_size is None else chunk_size
    theta = fm.theta.detach().requires_grad_(True)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        calls = _hooked_forward(fm, theta, inputs[rows], layers)
        if not calls.outputs:  # no supported layer ran: everything is diagonal
            return {}
        for name, x in calls.inputs:
            module, bias = layers[name]
            patches = _with_bias(_patches(module, x), bias).flatten(0, 1)
            a_side[name] = a_side.get(name, 0) + (patches.T @ patches).double()
        for v in cotangents:
            deltas = torch.autograd.grad(
                calls.result, calls.outputs, v[rows], retain_graph=True, allow_unused=True
            )
            for (name, _), delta in zip(calls.inputs, deltas, strict=True):
                if delta is None:
                    continue
                d = _output_rows(layers[name][0], delta).flatten(0, 1)
                s_side[name] = s_side.get(name, 0) + (d.T @ d).double()
    return {name: (a_side[name], s_side[name]) for name in layers if name in s_side}


@dataclass
class _Calls:
    """One hooked forward: the model's result, each supported call's (layer, input) and its
    output (the tensor S's gradients are taken at)."""

    result: Tensor
    inputs: list[tuple[str, Tensor]]
    outputs: list[Tensor]


def _hooked_forward(
    fm: FlatModel, theta: Tensor, x: Tensor, layers: dict[str, tuple[nn.Module, bool]]
) -> _Calls:
    """f(θ, x) with every call of a supported layer recorded. The hook hands the rest of the
    model a copy of the layer's output, so an in-place op downstream (ReLU(inplace=True))
    cannot change the tensor the gradients are taken at (it would drop the mask from S)."""
    inputs: list[tuple[str, Tensor]] = []
    outputs: list[Tensor] = []
    handles = []
    for name, (module, _) in layers.items():

        def hook(mod: nn.Module, args: tuple[Tensor, ...], output: Tensor, key: str = name):
            inputs.append((key, args[0].detach()))
            outputs.append(output)
            return output.clone()

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.enable_grad():
            result = fm(theta, x)
    finally:
        for handle in handles:
            handle.remove()
    return _Calls(result, inputs, outputs)


def gaussian_probes(inputs: Tensor, samples: int = SAMPLES, seed: int = SEED) -> list[Tensor]:
    """``samples`` cotangent fields v/√samples, v ~ N(0, I) of the outputs' shape (the
    surrogates map [N, F, H, W] to the same shape), seeded, in the inputs' dtype and device:
    Σ_k v_k v_kᵀ has expectation I, so the summed statistics estimate η's."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(inputs.shape, generator=generator, dtype=torch.float64) / math.sqrt(samples)
        ).to(device=inputs.device, dtype=inputs.dtype)
        for _ in range(samples)
    ]


def fit_eigenbasis(
    fm: FlatModel,
    inputs: Tensor,
    probes: list[Tensor] | None = None,
    *,
    chunk_size: int | None = None,
) -> EigenbasisMetric:
    """EK-FAC approximation of η = Σ_n J_nᵀ J_n for the batch ``inputs`` (module docstring).

    Linear and Conv2d (groups = 1) layers with a trainable weight get a Kronecker-factored
    eigenbasis (a bias column when the bias is trainable too); every other parameter the
    diagonal. ``probes``: cotangent fields whose outer products sum to I (in expectation);
    statistics are summed over them. Default: ``gaussian_probes`` (seeded). The D one-hot
    fields make every statistic exact (tests). ``chunk_size``: examples per forward and
    per vmapped VJP call, as for the gradients (None: all at once)."""
    cotangents = gaussian_probes(inputs) if probes is None else probes
    offsets = fm.layout.slices
    layers = {
        name: (module, module.bias is not None and _param(name, "bias") in offsets)
        for name, module in fm.model.named_modules()
        if _supported(module) and _param(name, "weight") in offsets
    }
    factors = _factors(fm, inputs, layers, cotangents, chunk_size)
    # probes × [N, P]: J_nᵀ v_n
    grads = per_example_vjps(fm, inputs, cotangents, chunk_size=chunk_size)
    blocks, covered = [], torch.zeros(fm.n_params, dtype=torch.bool)
    for name, (a, s) in factors.items():
        module, has_bias = layers[name]
        weight = offsets[_param(name, "weight")]
        bias = offsets[_param(name, "bias")] if has_bias else None
        qa = torch.linalg.eigh(0.5 * (a + a.T)).eigenvectors
        qs = torch.linalg.eigh(0.5 * (s + s.T)).eigenvectors
        block = KroneckerBlock(weight, bias, module.weight.shape[0], qa, qs, qa.new_zeros(0))
        lam = sum(((qs.T @ block.columns(g).double() @ qa) ** 2).sum(0) for g in grads)
        blocks.append(replace(block, eigenvalues=lam))
        covered[weight] = True
        if bias is not None:
            covered[bias] = True
    index = torch.nonzero(~covered).flatten().to(inputs.device)
    diagonal = sum((g[:, index].double() ** 2).sum(0) for g in grads)
    return EigenbasisMetric(tuple(blocks), index, diagonal, len(cotangents))


def fit_bytes(model: nn.Module, n: int, p: int, itemsize: int, chunk_activations: int) -> int:
    """Memory of a fit beyond the model's own, for the cost estimate: the float64 factors and
    eigenbases (A, Q_A, S, Q_S, Λ per Linear/Conv2d layer), the probes' per-example
    gradients (N·P each, P the trainable parameters), and the hooked forward of one chunk
    (``chunk_activations`` bytes of activations): its graph, the output copies and the
    largest layer's patches (kh·kw / stride² times that layer's input). At paper size the
    widest convolutions dominate."""
    factors, unfold = 0, 1.0
    for module in model.modules():
        if _supported(module) and module.weight.requires_grad:
            out = module.weight.shape[0]
            cols = module.weight[0].numel() + (module.bias is not None)
            factors += 2 * cols * cols + 2 * out * out + out * cols
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                unfold = max(unfold, kh * kw / (module.stride[0] * module.stride[1]))
    hooked = (2 + unfold) * chunk_activations
    return int(8 * factors + SAMPLES * n * p * itemsize + hooked)
