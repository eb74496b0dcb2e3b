"""bench.live_memory counts the tensors a block makes: new storages while they live, not views
or in-place results on storage that existed before (the reference: the bytes each tensor's
shape and dtype say)."""

from __future__ import annotations

import torch

from bench.live_memory import LiveTensorBytes


def test_new_storages_count_while_they_live_and_views_do_not():
    before = torch.zeros(256, 256)  # 256 KiB made outside the block
    with LiveTensorBytes() as memory:
        before.t().add_(1.0)  # a view and an in-place op on old storage: nothing new
        assert memory.live == 0
        made = torch.ones(512, 512)  # 1 MiB
        view = made[::2]  # shares its storage
        twice = made * 2  # 1 MiB more
        assert memory.live == memory.peak == 2 * 512 * 512 * 4
        del made, view, twice
        assert memory.live == 0 and memory.peak == 2 * 512 * 512 * 4
        memory.reset_peak()
        grads = torch.func.vmap(torch.func.grad(lambda w: (w * w).sum()))(torch.ones(4, 1000))
        assert memory.live == grads.numel() * 4  # the result; its input was freed
        assert memory.peak >= 2 * grads.numel() * 4  # the input and the result at once
