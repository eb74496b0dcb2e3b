"""Analysis batches (METHOD.md §5): one test trajectory per class × a window of transitions.

Example order is time-major, n = t·C + c, so an [N, N] influence matrix reshapes to
[T_r, C_r, T_p, C_p] with ``H.reshape(T, C, T, C)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from coherence.analysis.request import window_error
from coherence.errors import RequestError
from coherence.simulation.dataset import DatasetInfo


@dataclass(frozen=True)
class AnalysisBatch:
    """Inputs s_t and targets s_{t+1} of N = T·C examples, with what each example is."""

    inputs: Tensor = field(repr=False)  # (N, F, H, W)
    targets: Tensor = field(repr=False)  # (N, F, H, W)
    classes: tuple[str, ...]
    trajectory: int
    steps: tuple[int, ...]  # snapshot index t of each input, t_start .. t_start + T − 1
    times: tuple[float, ...]  # physical time of each input snapshot

    @property
    def n_examples(self) -> int:
        return self.inputs.shape[0]

    def example(self, n: int) -> tuple[str, int]:
        """(class, snapshot index) of example n."""
        t, c = divmod(n, len(self.classes))
        return self.classes[c], self.steps[t]


def check_window(info: DatasetInfo, t_start: int, n_steps: int) -> None:
    """Refuse a time window that runs past the trajectories, saying what fits (the rule:
    ``request.window_error``)."""
    error = window_error(t_start, n_steps, len(info.times) - 1, info.root.name)
    if error:
        raise RequestError(error)


def assemble_batch(
    info: DatasetInfo,
    classes: Sequence[str],
    trajectory: int,
    t_start: int,
    n_steps: int,
    *,
    split: str = "test",
    dtype: torch.dtype = torch.float32,
) -> AnalysisBatch:
    """Trajectory ``trajectory`` of each class in ``split``, transitions t_start .. +n_steps."""
    if len(classes) < 1 or len(set(classes)) != len(classes):
        raise RequestError(f"classes {','.join(classes)}: name one or more distinct classes")
    check_window(info, t_start, n_steps)
    per_class = []
    for class_name in classes:
        meta = info.file(split, class_name)
        if not 0 <= trajectory < meta.n_trajectories:
            count = meta.n_trajectories
            held = f"{count} trajectories: 0..{count - 1}" if count else "it holds none"
            raise RequestError(
                f"trajectory {trajectory} does not exist in the {split} split of {class_name} "
                f"({held})"
            )
        states = info.load(split, class_name, [trajectory], slice(t_start, t_start + n_steps + 1))
        per_class.append(states[0])  # (T+1, F, H, W)
    stacked = np.stack(per_class, axis=1)  # (T+1, C, F, H, W): time-major example order
    inputs = torch.from_numpy(stacked[:-1].reshape(-1, *stacked.shape[2:])).to(dtype)
    targets = torch.from_numpy(stacked[1:].reshape(-1, *stacked.shape[2:])).to(dtype)
    steps = tuple(range(t_start, t_start + n_steps))
    return AnalysisBatch(
        inputs=inputs,
        targets=targets,
        classes=tuple(classes),
        trajectory=trajectory,
        steps=steps,
        times=tuple(float(info.times[t]) for t in steps),
    )
