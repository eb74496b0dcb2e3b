"""Measured cost probes: seconds per forward / training step and activation bytes of a model
on the device it will run on, so a plan quotes this machine's figures, not a guess.

A probe runs a few passes of a small batch (warm-up excluded) and scales linearly in the batch
size; that holds once a batch fills the device, which is the regime of every plan here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from coherence.surrogates.losses import smse


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MIN_WINDOW_SECONDS = 0.1  # one timing window: a millisecond call repeated until it lasts this
MAX_CALLS_PER_WINDOW = 256
LONG_CALL_SECONDS = 1.0  # a call this long is timed once: a delay is a few % of it


def best_time(run, device: torch.device, repeats: int) -> float:
    """Seconds per call of ``run``: the fastest of ``repeats`` windows after one warm-up,
    each window repeating the call until it lasts MIN_WINDOW_SECONDS and waiting for the
    device's kernels (on a GPU, a call returns before its work is done).

    Why windows: on a busy machine one scheduler delay is tens of milliseconds, so a
    millisecond forward timed alone, best of two, read 200× slow, and a study's plan quoted
    5.8 h for a 3-minute job. Within a window a delay costs its share only; a call slower
    than the window is timed once per window, and a call over LONG_CALL_SECONDS once in all
    (a dashboard page at 128² waited seconds for each repeat)."""
    run()  # warm-up: allocator, kernels, lazy init
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            run()
            calls += 1
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= MIN_WINDOW_SECONDS or calls >= MAX_CALLS_PER_WINDOW:
                break
        best = min(best, elapsed / calls)
        if elapsed / calls >= LONG_CALL_SECONDS:
            break  # another window would cost seconds (a 128² batch) to save a few %
    return best


@dataclass(frozen=True)
class ModelProbe:
    """Per-example figures of one model on one device."""

    n_params: int
    forward_seconds: float  # one example's no-grad forward, within a batch
    train_step_seconds: float  # one example's forward + backward + optimizer share
    activation_bytes: int  # what one example's forward keeps for a backward (activation_bytes)
    device: str


def activation_bytes(model: nn.Module, example: torch.Tensor) -> int:
    """Bytes one example's forward keeps for a backward: the distinct storages autograd
    saves (weights excluded), or the module outputs where those are more. Module outputs
    alone miss what a module computes inside: the paper ViT saves 3.5× its module outputs
    (attention scores, softmax, GELU inputs), and the cost estimate came out 3× below the
    58 GiB a paper ViT unit took on an H200 (bench/results/paper_unit_vit_cuda.json)."""
    outputs = 0

    def hook(_module, _inputs, output):
        nonlocal outputs
        if isinstance(output, torch.Tensor):
            outputs += output.numel() * output.element_size()

    weights = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    example = example.detach().clone()  # a view (inputs[:1]) would count its whole batch
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return max(outputs, sum(saved.values()))


def probe_forward(model: nn.Module, example: torch.Tensor, *, batch: int = 4) -> float:
    """Seconds of one example's no-grad forward within a batch of ``batch`` copies. On an
    H200 a batch of 4 does not fill the GPU: a study plan priced from it came out 1.3× (paper
    ViT) and 2.4× (paper UNet) above the measured unit, on the safe side."""
    device = next(model.parameters()).device
    x = example.to(device).unsqueeze(0).expand(batch, *example.shape).contiguous()
    was_training = model.training
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    try:
        return best_time(forward, device, repeats=3) / batch
    finally:
        model.train(was_training)


def probe_model(
    model: nn.Module, example: torch.Tensor, *, batch: int = 4, repeats: int = 3
) -> ModelProbe:
    """Time ``batch`` copies of ``example`` [F, H, W] through ``model`` (already on its device).

    Training is timed with a plain SGD step on a copy of the parameters' values restored
    afterwards, so the probe never changes the model.
    """
    device = next(model.parameters()).device
    x = example.to(device).unsqueeze(0).expand(batch, *example.shape).contiguous()
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        loss = smse(model(x), x)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.add_(p.grad, alpha=-1e-12)

    try:
        forward_seconds = probe_forward(model, example, batch=batch)
        model.train()
        step_seconds = best_time(train_step, device, repeats) / batch
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(saved)
        model.train(was_training)
    return ModelProbe(
        n_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        forward_seconds=forward_seconds,
        train_step_seconds=step_seconds,
        activation_bytes=activation_bytes(model, x[:1]),
        device=str(device),
    )
