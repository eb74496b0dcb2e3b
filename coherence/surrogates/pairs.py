"""One-step training pairs (s_t, s_t+1) of a split: in memory when they fit, streamed otherwise.

The paper's data do not fit: 3 PDEgym classes at 128² hold ≈ 6,500 training trajectories each,
≈ 80 GB of float32 pairs. ``TransitionPairs`` keeps the pairs in memory below a budget
(``COHERENCE_TRAIN_MEMORY``, default a quarter of the available memory), which is exactly the
old behaviour, and otherwise reads each batch's snapshots from the open HDF5 files, so memory
stays bounded by one batch whatever the number of trajectories. Both modes index pairs the same
way (class-major, then trajectory, then time), so a seeded shuffle picks the same examples.
The input normalization statistics are float64 sums over every input state either way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import h5py
import numpy as np
import torch
from torch import Tensor

from coherence.errors import RequestError
from coherence.simulation.dataset import DatasetInfo
from coherence.simulation.wellformat import _channels_from_fields
from coherence.surrogates.footprint import available_bytes

MEMORY_ENV = "COHERENCE_TRAIN_MEMORY"
STATS_BLOCK = 16  # trajectories per read while summing the normalization statistics


def memory_budget() -> int:
    """Bytes the in-memory pairs may take (``COHERENCE_TRAIN_MEMORY`` in bytes overrides)."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        try:
            return int(float(text))
        except ValueError:
            raise RequestError(f"{MEMORY_ENV}={text!r}: give a number of bytes") from None
    return available_bytes("cpu") // 4


class TransitionPairs:
    """All pairs (s_t, s_t+1), t < transitions, of ``classes`` in one split."""

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        classes: Sequence[str],
        transitions: int,
        *,
        budget: int | None = None,
    ) -> None:
        n_steps = len(info.times)
        if transitions + 1 > n_steps:
            raise RequestError(
                f"transitions={transitions} needs {transitions + 1} snapshots but {info.root} "
                f"has {n_steps}; use transitions ≤ {n_steps - 1}"
            )
        self.info, self.split, self.transitions = info, split, transitions
        self.classes = tuple(classes)
        self.metas = [info.file(split, c) for c in classes]
        self.counts = [m.n_trajectories * transitions for m in self.metas]
        self.offsets = np.cumsum([0, *self.counts])
        self.state_shape = (len(info.channels), info.height, info.width)
        pair_bytes = 2 * 4 * int(np.prod(self.state_shape))
        self.streamed = len(self) * pair_bytes > (memory_budget() if budget is None else budget)
        self._files: dict[int, h5py.File] = {}
        if not self.streamed:
            self.inputs, self.targets = self._load_all()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (0 when streamed)."""
        return 0 if self.streamed else self.inputs.nbytes + self.targets.nbytes

    def _load_all(self) -> tuple[Tensor, Tensor]:
        inputs, targets = [], []
        for class_name in self.classes:
            states = self.info.load(self.split, class_name, steps=slice(0, self.transitions + 1))
            inputs.append(states[:, :-1].reshape(-1, *states.shape[2:]))
            targets.append(states[:, 1:].reshape(-1, *states.shape[2:]))
        return torch.from_numpy(np.concatenate(inputs)), torch.from_numpy(np.concatenate(targets))

    def _file(self, c: int) -> h5py.File:
        if c not in self._files:
            self._files[c] = h5py.File(self.metas[c].path, "r")
        return self._files[c]

    def _read(self, c: int, trajectories: list[int], steps: slice) -> np.ndarray:
        """States [B, T, F, H, W] (float32, model channel order) straight from the file."""
        meta = self.metas[c]
        parts = _channels_from_fields(meta.family, self._file(c), trajectories, steps)
        states = np.swapaxes(np.stack(parts, axis=2), -1, -2)  # (B, T, F, H, W)
        if not np.isfinite(states).all():
            raise RequestError(
                f"{meta.path}: a trajectory among {trajectories} holds NaN or inf values; "
                "re-import it or exclude it"
            )
        return np.ascontiguousarray(states, dtype=np.float32)

    def get(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs and targets [len(index), F, H, W] of the pairs ``index`` (any order)."""
        if not self.streamed:
            return self.inputs[index], self.targets[index]
        flat = index.cpu().numpy()
        x = np.empty((len(flat), *self.state_shape), dtype=np.float32)
        y = np.empty_like(x)
        c_of = np.searchsorted(self.offsets, flat, side="right") - 1
        for k, (pair, c) in enumerate(zip(flat, c_of, strict=True)):
            trajectory, t = divmod(int(pair - self.offsets[c]), self.transitions)
            states = self._read(int(c), [trajectory], slice(t, t + 2))[0]
            x[k], y[k] = states[0], states[1]
        return torch.from_numpy(x), torch.from_numpy(y)

    def channel_stats(self) -> tuple[Tensor, Tensor]:
        """Mean and (unbiased) standard deviation of each channel over every input state,
        in float64 (the model's normalization)."""
        if not self.streamed:
            flat = self.inputs.transpose(0, 1).reshape(self.inputs.shape[1], -1).double()
            return flat.mean(dim=1), flat.std(dim=1)
        channels = self.state_shape[0]
        count, total = 0, np.zeros(channels)
        for states in self._input_blocks():
            count += states.shape[0] * states[0, 0].size
            total += states.sum(axis=(0, 2, 3), dtype=np.float64)
        mean = total / count
        squares = np.zeros(channels)
        for states in self._input_blocks():
            centred = states.astype(np.float64) - mean[None, :, None, None]
            squares += (centred**2).sum(axis=(0, 2, 3))
        std = np.sqrt(squares / max(count - 1, 1))
        return torch.from_numpy(mean), torch.from_numpy(std)

    def _input_blocks(self):
        """Input states [n, F, H, W] in blocks of STATS_BLOCK trajectories."""
        for c, meta in enumerate(self.metas):
            for start in range(0, meta.n_trajectories, STATS_BLOCK):
                stop = min(start + STATS_BLOCK, meta.n_trajectories)
                states = self._read(c, list(range(start, stop)), slice(0, self.transitions))
                yield states.reshape(-1, *self.state_shape)

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
