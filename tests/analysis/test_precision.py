"""IEEE float32 inside an analysis: the TF32 switches are off in the block and the caller's
settings come back, also after an error; COHERENCE_TF32=1 leaves them alone. The switches are
process flags that exist on a CPU build too, so this runs everywhere (tests/test_cuda.py
checks the numbers on a GPU)."""

from __future__ import annotations

import pytest
import torch

from coherence.analysis import precision


@pytest.fixture
def gpu_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv(precision.ENV, raising=False)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def flags() -> tuple[bool, bool]:
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def test_tf32_is_off_inside_and_restored_after(gpu_visible):
    with precision.ieee_float32():
        assert flags() == (False, False)
        assert torch.backends.cudnn.conv.fp32_precision != "tf32"
    assert flags() == (True, True)


def test_settings_come_back_after_an_error(gpu_visible):
    with pytest.raises(ValueError), precision.ieee_float32():
        raise ValueError("boom")
    assert flags() == (True, True)


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_environment_keeps_tf32(gpu_visible, monkeypatch, value):
    monkeypatch.setenv(precision.ENV, value)
    with precision.ieee_float32():
        assert flags() == (True, True)


def test_analysis_runs_with_tf32_off(gpu_visible, ce_model, ce_batch):
    """compute_influence and top_eigenvalue run inside the block: a model that records the
    flag at each forward sees it off."""
    from coherence.analysis.influence import compute_influence, top_eigenvalue

    seen = []
    handle = ce_model.register_forward_hook(lambda *_: seen.append(torch.backends.cudnn.allow_tf32))
    compute_influence(ce_model, *ce_batch, estimator="ekfac")  # hooks run outside torch.func
    top_eigenvalue(ce_model, ce_batch[0], iters=2)
    handle.remove()
    assert seen and not any(seen)
    assert flags() == (True, True)


def test_nested_and_overlapping_blocks_restore_once_at_the_last_exit(gpu_visible):
    outer = precision.ieee_float32()
    outer.__enter__()
    with precision.ieee_float32():
        assert flags() == (False, False)
    assert flags() == (False, False)  # the outer block still runs
    outer.__exit__(None, None, None)
    assert flags() == (True, True)


def test_a_switch_already_off_keeps_its_setting(gpu_visible):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.fp32_precision = "none"
    with precision.ieee_float32():
        assert flags() == (False, False)
    assert torch.backends.cuda.matmul.fp32_precision == "none"


def test_a_caller_on_the_per_operator_api_is_served_by_it(gpu_visible):
    """torch ≥ 2.9 refuses to read allow_tf32 once conv alone was set by fp32_precision
    (conv and rnn then differ): the block must neither fail nor leave matmul on TF32."""
    saved = torch.backends.cudnn.conv.fp32_precision
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        _ = torch.backends.cudnn.allow_tf32
    try:
        with precision.ieee_float32():
            assert torch.backends.cudnn.conv.fp32_precision == "ieee"
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.cudnn.conv.fp32_precision = saved
