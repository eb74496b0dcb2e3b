"""Training pairs streamed from the files equal the in-memory ones, so a dataset larger than
memory trains the same model; the in-memory path is the old one, bit for bit."""

from __future__ import annotations

import numpy as np
import torch

from coherence.simulation.dataset import open_dataset
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates.pairs import MEMORY_ENV, TransitionPairs
from coherence.surrogates.training import train
from tests.fixtures import tiny_args

CLASSES = ("CE-RP", "CE-CRP")


def test_streamed_pairs_and_statistics_equal_the_in_memory_ones(tiny_dataset):
    info = open_dataset(tiny_dataset)
    memory = TransitionPairs(info, "train", CLASSES, 4, budget=10**12)
    streamed = TransitionPairs(info, "train", CLASSES, 4, budget=0)
    assert not memory.streamed and streamed.streamed and streamed.nbytes == 0
    assert len(memory) == len(streamed) == 2 * 4 * 4  # classes × trajectories × transitions
    index = torch.randperm(len(memory), generator=torch.Generator().manual_seed(0))[:13]
    for a, b in zip(memory.get(index), streamed.get(index), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # pair p of class c is (trajectory, t) = divmod(p - offset_c, transitions)
    states = info.load("train", "CE-CRP", trajectories=[2], steps=slice(3, 5))[0]
    x, y = streamed.get(torch.tensor([16 + 2 * 4 + 3]))
    np.testing.assert_array_equal(x[0].numpy(), states[0])
    np.testing.assert_array_equal(y[0].numpy(), states[1])
    for a, b in zip(memory.channel_stats(), streamed.channel_stats(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    streamed.close()


def test_training_streams_a_dataset_over_the_memory_budget(tiny_dataset, tmp_path, monkeypatch):
    reference = train(tiny_dataset, tmp_path / "memory", tiny_args())
    monkeypatch.setenv(MEMORY_ENV, "0")
    lines: list[str] = []
    streamed = train(tiny_dataset, tmp_path / "streamed", tiny_args(), log=lines.append)
    assert any("read batch by batch" in line for line in lines)
    a = ckpt.read_history(reference)
    b = ckpt.read_history(streamed)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b, strict=True):  # same batches, normalization equal to round-off
        assert abs(ra["valid_smse"] - rb["valid_smse"]) <= 1e-5 * abs(ra["valid_smse"])
    model_a, _ = ckpt.load(reference)
    model_b, _ = ckpt.load(streamed)
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)
