"""Functional autodiff for influence: the model as a pure function f(θ, x) of a flat θ ∈ R^P.

Everything the estimators need is one of three products with the Jacobian J = ∂f/∂θ:
- per-example VJPs  g[n] = J_nᵀ c[n]   (vmap over examples of one VJP),
- batch JVPs        J v  ∈ R^{N×F×H×W} (a traced tangent program, see ``tangents``),
- batch VJPs        Jᵀ u ∈ R^P          (one retained reverse graph).
Measured (2 threads, 0.27M-parameter demo UNet, N = 48, 32², F = 4; cost in batch forwards of
0.04 s): all N per-example VJPs 6; tangent program 2.2–2.3 per tangent after a trace of ≈ 1–2 s
once per process and architecture; plain ``torch.func.jvp`` 3.5 per tangent, vmapped over 4
tangents 3.0 each; ``torch.func.linearize`` 2.3 per tangent but a fresh ≈ 45-forward trace
per (θ, x); the double-backward trick 5.6 per tangent.
Because the model is per-example independent (no BatchNorm), the batch Jacobian J is the
stack of the J_n, so η = Σ_n J_nᵀ J_n = JᵀJ and its matvec needs no per-example loop.

θ holds the parameters with ``requires_grad`` (frozen ones travel with the buffers); a model
whose parameters are ALL frozen (loaded for inference) is analysed over all of them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from coherence.analysis import tangents


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of the trainable parameters, in the order they are flattened."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def n_params(self) -> int:
        return sum(self.numels)

    @property
    def slices(self) -> dict[str, slice]:
        """Where each parameter sits in θ."""
        ends = itertools.accumulate(self.numels)
        return {
            name: slice(end - size, end)
            for name, size, end in zip(self.names, self.numels, ends, strict=True)
        }

    def flatten(self, tensors: dict[str, Tensor]) -> Tensor:
        """dict name → tensor (shape as in the module) → θ [P]."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def flatten_batched(self, tensors: dict[str, Tensor]) -> Tensor:
        """dict name → [B, *shape] → [B, P] (per-example gradients from torch.func)."""
        return torch.cat([tensors[n].flatten(start_dim=1) for n in self.names], dim=1)

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """θ [P] → dict name → view of shape as in the module (differentiable)."""
        chunks = torch.split(theta, self.numels)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}


class FlatModel:
    """The module as f(θ, x): functional_call with θ unflattened into the parameter dict.

    θ₀ (``theta``) is a detached copy of the current trainable parameters; buffers and frozen
    parameters are passed unchanged. The module itself is never modified.
    """

    def __init__(self, model: nn.Module) -> None:
        named = list(model.named_parameters())
        everything = not any(p.requires_grad for _, p in named)  # loaded for inference only
        trainable = {n: p.detach() for n, p in named if everything or p.requires_grad}
        frozen = {n: p.detach() for n, p in named if n not in trainable}
        self.model = model
        self.layout = ParamLayout(
            names=tuple(trainable), shapes=tuple(p.shape for p in trainable.values())
        )
        self.theta = self.layout.flatten(trainable) if trainable else torch.empty(0)
        self.constants = {**frozen, **{n: b.detach() for n, b in model.named_buffers()}}

    @property
    def n_params(self) -> int:
        return self.layout.n_params

    def __call__(self, theta: Tensor, x: Tensor) -> Tensor:
        """f(θ, x) for a batch x [N, F, H, W] → [N, F, H, W]."""
        state = {**self.layout.unflatten(theta), **self.constants}
        return functional_call(self.model, state, (x,))

    def one(self, theta: Tensor, x: Tensor) -> Tensor:
        """f(θ, x) for one example x [F, H, W] (the model sees a batch of one)."""
        return self(theta, x.unsqueeze(0)).squeeze(0)


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Run with every submodule in eval mode; restore each submodule's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def per_example_vjps(
    fm: FlatModel,
    inputs: Tensor,
    cotangents: Sequence[Tensor],
    *,
    chunk_size: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> list[Tensor]:
    """g_k[n] = J_nᵀ c_k[n] for K cotangent fields c_k [N, F, H, W]; returns K tensors [N, P].

    One forward and K backwards per example, vectorised over examples with vmap and run in
    chunks of ``chunk_size`` examples (None: all at once) to bound memory (activations of a
    chunk times K plus the K·N·P result). The cotangents are constants: nothing is
    differentiated through them.
    """
    n = inputs.shape[0]
    stacked = torch.stack(list(cotangents), dim=1)  # (N, K, F, H, W)

    def one(theta: Tensor, x: Tensor, cs: Tensor) -> Tensor:
        _, pull = vjp(lambda th: fm.one(th, x), theta)
        return torch.stack([pull(c)[0] for c in cs.unbind(0)])  # (K, P)

    batched = vmap(one, in_dims=(None, 0, 0))
    step = n if chunk_size is None else chunk_size
    parts = []
    with torch.no_grad():  # the VJPs run their own autograd; no graph of the results
        for start in range(0, n, step):
            stop = min(start + step, n)
            parts.append(batched(fm.theta, inputs[start:stop], stacked[start:stop]))
            if progress is not None:
                progress(stop / n)
    grads = torch.cat(parts, dim=0)  # (N, K, P)
    return list(grads.unbind(1))


class BatchJacobian:
    """Products with the stacked batch Jacobian J [N·D, P] at θ₀ (outputs as [N, F, H, W]).

    ``jvp``: a ``TangentProgram`` (see ``tangents``: the JVP graph traced once per model
    structure and input shape, split into a primal part run once here and a tangent part,
    ≈ two forwards per tangent). Every binding's first non-zero product is checked against
    plain ``torch.func.jvp`` (≈ 3.5 forwards; its exact value is the one returned). A mismatch
    beyond √eps (relative, 2-norm) with a cached program re-traces once (a model the structure
    key cannot tell apart); a mismatch of a fresh trace, a replay error, or a model torch
    cannot trace makes every product of this binding use plain jvp (``jvp_method``), and the
    structure is not traced again in this process. ``vjp``: one reverse graph retained across
    calls, ≈ two forwards per cotangent. Both are built lazily. Memory: the VJP's graph (what
    autograd saves for the batch) and the program's primal values (1.5–1.8× that on the demo
    and paper models; ``TangentProgram.boundary_bytes``), each once its product kind is used.
    """

    def __init__(self, fm: FlatModel, inputs: Tensor) -> None:
        self.fm = fm
        self.inputs = inputs
        self.jvp_method: str | None = None  # "traced" | "jvp" once the first JVP ran
        self._push: Callable[[Tensor], Tensor] | None = None
        self._pull: Callable[[Tensor], tuple[Tensor]] | None = None

    def _batch(self, theta: Tensor) -> Tensor:
        return self.fm(theta, self.inputs)

    def _plain_jvp(self, tangent: Tensor) -> Tensor:
        with torch.no_grad(), tangents.quiet_forward_ad():
            return torch.func.jvp(self._batch, (self.fm.theta,), (tangent,))[1]

    def _agrees(self, push: Callable[[Tensor], Tensor], tangent: Tensor, exact: Tensor) -> bool:
        """The traced product matches plain jvp to √eps (relative, 2-norm); a program that
        raises on replay (e.g. a layout its views were not traced for) does not."""
        try:
            traced = push(tangent)
        except Exception:  # replay failed: plain jvp still gives the exact product
            return False
        tol = torch.finfo(exact.dtype).eps ** 0.5
        error = torch.linalg.vector_norm(traced - exact)
        return bool(torch.isfinite(error)) and bool(error <= tol * torch.linalg.vector_norm(exact))

    def _bind(self, *, fresh: bool) -> Callable[[Tensor], Tensor] | None:
        """A traced program bound to (θ, inputs), or None where torch cannot trace the model
        (TraceError) or its primal part fails on these inputs: plain jvp is then exact."""
        try:
            program = tangents.cached_program(self.fm, self.inputs, fresh=fresh)
            return program.bind(self.fm, self.inputs)
        except Exception:
            return None

    def jvp(self, tangent: Tensor) -> Tensor:
        """J v for v [P] → [N, F, H, W]."""
        if self._push is not None:
            return self._push(tangent)
        exact = self._plain_jvp(tangent)
        if self.jvp_method == "jvp" or not bool(torch.linalg.vector_norm(exact) > 0):
            return exact  # nothing to check a program against yet (J v = 0): decide later
        self.jvp_method = "jvp"
        was_cached = tangents.is_cached(self.fm, self.inputs)
        push = self._bind(fresh=False)
        if push is None:
            return exact
        if not self._agrees(push, tangent, exact):
            del push  # free its boundary values before a second binding
            # a cached program may be stale (a model the structure key cannot tell apart)
            push = self._bind(fresh=True) if was_cached else None
            if push is None or not self._agrees(push, tangent, exact):
                tangents.forget(self.fm, self.inputs, "its trace disagrees with plain jvp")
                return exact
        self._push, self.jvp_method = push, "traced"
        return exact

    def vjp(self, cotangent: Tensor) -> Tensor:
        """Jᵀ u = Σ_n J_nᵀ u_n for u [N, F, H, W] → [P]."""
        if self._pull is None:
            _, self._pull = torch.func.vjp(self._batch, self.fm.theta)
        with torch.no_grad():
            return self._pull(cotangent)[0]


class GaussNewtonOperator:
    """The damped batch metric (η + λI) v = Σ_n J_nᵀ (J_n v) + λ v, matrix-free.

    Cost per vector: one batch JVP and one batch VJP (≈ four forwards of the batch).
    """

    def __init__(self, jacobian: BatchJacobian, damping: float) -> None:
        self.jacobian = jacobian
        self.damping = damping

    def __call__(self, v: Tensor) -> Tensor:
        """v [P] → (η + λI) v [P]."""
        return self.jacobian.vjp(self.jacobian.jvp(v)) + self.damping * v

    def apply_rows(self, vs: Tensor) -> Tensor:
        """Rows v_k of vs [K, P] → rows (η + λI) v_k [K, P] (one JVP + one VJP each)."""
        return torch.stack([self(v) for v in vs.unbind(0)]) if len(vs) else vs.clone()
