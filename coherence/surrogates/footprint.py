"""Memory a model needs, counted from its config without allocating it, and what is free.

A checkpoint config with an absurd size (a width of 10⁶) must be refused with the figure, not
reach the allocator (which dies with ``DefaultCPUAllocator: can't allocate memory`` after
trying 36 TB). The model is built on PyTorch's ``meta`` device: every tensor has its shape
and dtype but no storage, so the count is exact for any architecture (built-in or custom)
at the cost of constructing the modules (≈ 0.2 s for the paper UNet). One example's
forward pass on meta tensors gives the activations autograd keeps for a backward pass.

    load bytes (CPU)    = 2 · parameter bytes (the module + the file's tensors) [+ activations]
    device bytes (GPU)  = parameter bytes + activation bytes of one example

Free memory: CPU from /proc/meminfo (MemAvailable), bounded by a cgroup v2 limit when the
process runs in a container, else ``os.sysconf``; CUDA from ``torch.cuda.mem_get_info``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from coherence.errors import CheckpointError, CoherenceError
from coherence.resources import UNKNOWN, free_memory
from coherence.surrogates.registry import model_from_config_dict


@dataclass(frozen=True)
class Footprint:
    """Sizes of a model, counted on the meta device."""

    parameters: int  # trainable and frozen parameter scalars
    state_bytes: int  # parameters + buffers, as stored in model.safetensors
    activation_bytes: int  # one example's forward, as kept for backward (0: unknown)


def _meta_model(model_config: Mapping[str, Any], trust_code: bool) -> torch.nn.Module:
    with torch.device("meta"):
        return model_from_config_dict(model_config, trust_code=trust_code)


def _counts(model: torch.nn.Module) -> Footprint:
    parameters = sum(p.numel() for p in model.parameters())
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return Footprint(parameters, state, 0)


def model_footprint(
    model_config: Mapping[str, Any],
    channels: int,
    resolution: tuple[int, int],
    *,
    trust_code: bool = False,
) -> Footprint:
    """Count a model from its ``model_config_dict`` without allocating its tensors."""
    model = _meta_model(model_config, trust_code)
    counts = _counts(model)
    return replace(counts, activation_bytes=_activation_bytes(model, channels, resolution))


def check_model_fits(
    model_config: Mapping[str, Any],
    channels: int,
    resolution: tuple[int, int],
    device: str | torch.device,
    where: str | Path,
    *,
    trust_code: bool = False,
    limit: int | None = None,
) -> Footprint:
    """Refuse a model that cannot be loaded on ``device`` (see :func:`check_fits`); the
    parameters are checked before the meta forward pass, so an absurd width is refused
    without running anything."""
    model = _meta_model(model_config, trust_code)
    counts = _counts(model)
    check_fits(counts, device, where, limit=limit)
    footprint = replace(counts, activation_bytes=_activation_bytes(model, channels, resolution))
    check_fits(footprint, device, where, limit=limit)
    return footprint


def _activation_bytes(model: torch.nn.Module, channels: int, resolution: tuple[int, int]) -> int:
    weights = {id(t) for t in model.state_dict(keep_vars=True).values()}
    kept = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in weights:
            kept[0] += tensor.numel() * tensor.element_size()
        return tensor

    x = torch.empty(1, channels, *resolution, device="meta", requires_grad=True)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(x)
    except (RuntimeError, NotImplementedError, TypeError, CoherenceError):
        return 0  # a custom module that cannot run on meta tensors: activations unknown
    return kept[0]


def available_bytes(device: str | torch.device) -> int:
    """Memory free for new tensors on ``device`` now."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return UNKNOWN  # moving the model there fails later with its own message
        free, _total = torch.cuda.mem_get_info(device)
        # blocks torch's caching allocator holds but no tensor uses are free to this process
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type != "cpu":
        return UNKNOWN
    return free_memory()


def training_step_bytes(
    n_params: int, batch_size: int, activation_bytes: int, itemsize: int = 4
) -> int:
    """Bytes one optimizer step holds: the weights, their gradients and AdamW's two moments
    (4 copies of the parameters) and one batch's activations at 2× what autograd keeps for
    the backward (``coherence.probe.activation_bytes``; the kept tensors and the gradients
    flowing back: an upper bound). Shared by ``coherence train``'s check and a study's plan."""
    return 4 * n_params * itemsize + 2 * batch_size * activation_bytes


def batch_size_that_fits(fixed: int, per_example: int, budget: float) -> int:
    """The largest batch whose ``fixed + batch · per_example`` bytes stay within ``budget``
    (0: not even one example)."""
    return max(0, int((budget - fixed) // per_example)) if per_example else 0


def memory_text(n: int) -> str:
    """'1.25 GiB' / '380.2 MiB': memory in binary units, MiB below an eighth of a GiB."""
    return f"{n / 2**30:,.2f} GiB" if n >= 2**27 else f"{n / 2**20:,.1f} MiB"


def check_fits(
    footprint: Footprint,
    device: str | torch.device,
    where: str | Path,
    *,
    limit: int | None = None,
) -> None:
    """Refuse (CheckpointError naming ``where``, the estimate and the limit) a model that
    cannot be loaded on ``device``; ``limit`` replaces the free-memory reading (tests)."""
    device = torch.device(device)
    params = f"{footprint.parameters:,} parameters = {memory_text(footprint.state_bytes)}"
    acts = f"{memory_text(footprint.activation_bytes)} of activations for one example"
    cpu_only = device.type == "cpu"
    needs = [
        (
            "CPU",
            torch.device("cpu"),
            2 * footprint.state_bytes + cpu_only * footprint.activation_bytes,
            f"{params}, held twice while loading" + (f", plus {acts}" if cpu_only else ""),
        )
    ]
    if not cpu_only:
        needs.append(
            (str(device), device, footprint.state_bytes + footprint.activation_bytes,
             f"{params} plus {acts}")
        )  # fmt: skip
    for label, dev, estimate, detail in needs:
        free = available_bytes(dev) if limit is None else limit
        if estimate > free:
            raise CheckpointError(
                f"{where}: this model needs about {memory_text(estimate)} of {label} memory "
                f"({detail}) but only {memory_text(free)} is free; its sizes in config.json are "
                "wrong or the machine is too small: fix the config or use a larger machine"
            )
