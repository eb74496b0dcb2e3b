"""Traced tangent programs (coherence.analysis.tangents): exact JVPs, reuse across weights and
batches, and the checks that catch a stale or broken trace. Reference: the dense jacrev
Jacobian of tests/analysis/conftest.py and plain torch.func.jvp."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from coherence.analysis import tangents
from coherence.analysis.autodiff import BatchJacobian, FlatModel
from coherence.analysis.tangents import _wrap_pad
from tests.analysis.fixtures import TinyConv, dense_reference

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def empty_program_cache():
    tangents.clear_programs()
    yield
    tangents.clear_programs()


def dense_jvp(model: nn.Module, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
    return torch.einsum("ndp,p->nd", dense_reference(model, x, y).jac, v).reshape(x.shape)


def count_traces(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = tangents.trace_program

    def counted(fm, inputs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(fm, inputs)

    monkeypatch.setattr(tangents, "trace_program", counted)
    return calls


def test_program_is_exact_and_reused_across_weights_and_batches(ce_batch, generator, monkeypatch):
    traces = count_traces(monkeypatch)
    x, y = ce_batch
    for seed in (0, 1):  # two "checkpoints" of one architecture
        torch.manual_seed(seed)
        model = TinyConv(4).double()
        for batch in (x, x.flip(0) * 1.1):  # two batches of one shape
            jac = BatchJacobian(FlatModel(model), batch)
            for _ in range(2):
                v = torch.randn(FlatModel(model).n_params, generator=generator, dtype=x.dtype)
                torch.testing.assert_close(
                    jac.jvp(v), dense_jvp(model, batch, y, v), rtol=1e-10, atol=1e-12
                )
            assert jac.jvp_method == "traced"
    assert len(traces) == 1  # one trace served both models and both batches


def test_boundary_values_survive_many_tangents(ce_model, ce_batch, generator):
    """The tangent part must never write into the kept primal values."""
    x, _ = ce_batch
    fm = FlatModel(ce_model)
    program = tangents.cached_program(fm, x)
    assert not any(tangents._mutates(n) for n in program.tangent.graph.nodes)
    push = program.bind(fm, x)
    v1, v2 = torch.randn(2, fm.n_params, generator=generator, dtype=x.dtype)
    first = push(v1).clone()
    push(v2)
    torch.testing.assert_close(push(v1), first, rtol=0, atol=0)


class Scaled(nn.Module):
    """A model whose constant hides in a list attribute: the structure key cannot see it, so a
    cached trace replays the traced value."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
        self.scale = [scale]

    def forward(self, x: Tensor) -> Tensor:
        return x + self.scale[0] * torch.tanh(self.conv(x))


class TensorAttribute(nn.Module):
    """A tensor that is neither parameter nor buffer: torch 2.13 cannot trace it in fake mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.scale = torch.tensor(2.0, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.scale * self.conv(x)


def test_untraceable_model_uses_plain_jvp(ce_batch, generator):
    x, y = ce_batch
    model = TensorAttribute().double()
    jac = BatchJacobian(FlatModel(model), x)
    for _ in range(2):
        v = torch.randn(FlatModel(model).n_params, generator=generator, dtype=x.dtype)
        torch.testing.assert_close(jac.jvp(v), dense_jvp(model, x, y, v), rtol=1e-10, atol=1e-12)
    assert jac.jvp_method == "jvp"
    # the failed trace left this thread's torch.func state intact: tracing still works here
    other = TinyConv(4).double()
    jac = BatchJacobian(FlatModel(other), x)
    v = torch.randn(FlatModel(other).n_params, generator=generator, dtype=x.dtype)
    torch.testing.assert_close(jac.jvp(v), dense_jvp(other, x, y, v), rtol=1e-10, atol=1e-12)
    jac.jvp(v)
    assert jac.jvp_method == "traced"


def test_stale_cached_program_is_retraced(ce_batch, generator, monkeypatch):
    x, y = ce_batch
    torch.manual_seed(0)
    first, second = Scaled(1.0).double(), Scaled(3.0).double()
    second.load_state_dict(first.state_dict())
    BatchJacobian(FlatModel(first), x).jvp(torch.randn(FlatModel(first).n_params).double())
    traces = count_traces(monkeypatch)
    jac = BatchJacobian(FlatModel(second), x)
    for _ in range(2):
        v = torch.randn(FlatModel(second).n_params, generator=generator, dtype=x.dtype)
        torch.testing.assert_close(jac.jvp(v), dense_jvp(second, x, y, v), rtol=1e-10, atol=1e-12)
    assert jac.jvp_method == "traced" and len(traces) == 1  # re-traced once, then correct


def test_plain_attributes_are_part_of_the_structure_key(ce_batch):
    """Two attention blocks differing only in head count (not in their repr) get two traces."""
    x, _ = ce_batch

    class Heads(nn.Module):
        def __init__(self, heads: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.heads = heads

        def forward(self, x: Tensor) -> Tensor:
            return x + self.conv(x) / self.heads

    two, four = Heads(2).double(), Heads(4).double()
    assert repr(two) == repr(four)
    tangents.cached_program(FlatModel(two), x)
    assert not tangents.is_cached(FlatModel(four), x)
    assert not tangents.is_cached(FlatModel(two.eval()), x)  # train/eval mode is structure


def test_broken_trace_falls_back_to_plain_jvp(ce_model, ce_batch, generator, monkeypatch):
    x, y = ce_batch

    class Garbage:
        def bind(self, fm, inputs):  # type: ignore[no-untyped-def]
            return lambda tangent: torch.full_like(inputs, 1e30)

    monkeypatch.setattr(tangents, "trace_program", lambda fm, inputs: Garbage())
    jac = BatchJacobian(FlatModel(ce_model), x)
    for _ in range(2):
        v = torch.randn(FlatModel(ce_model).n_params, generator=generator, dtype=x.dtype)
        torch.testing.assert_close(jac.jvp(v), dense_jvp(ce_model, x, y, v), rtol=1e-10, atol=1e-12)
    assert jac.jvp_method == "jvp"


def test_a_zero_first_tangent_defers_the_check(ce_batch, generator):
    """J·0 = 0 matches any program: the check waits for a tangent that can tell."""
    x, y = ce_batch
    torch.manual_seed(0)
    first, second = Scaled(1.0).double(), Scaled(3.0).double()
    second.load_state_dict(first.state_dict())
    BatchJacobian(FlatModel(first), x).jvp(torch.randn(FlatModel(first).n_params).double())
    jac = BatchJacobian(FlatModel(second), x)  # the cached program is stale for this one
    n_params = FlatModel(second).n_params
    assert torch.count_nonzero(jac.jvp(torch.zeros(n_params, dtype=x.dtype))) == 0
    assert jac.jvp_method is None
    for _ in range(2):
        v = torch.randn(n_params, generator=generator, dtype=x.dtype)
        torch.testing.assert_close(jac.jvp(v), dense_jvp(second, x, y, v), rtol=1e-10, atol=1e-12)
    assert jac.jvp_method == "traced"


def test_float32_programs_match_plain_jvp(generator):
    torch.manual_seed(0)
    model = TinyConv(4)
    x = torch.randn(5, 4, 6, 6, generator=generator)
    fm = FlatModel(model)
    jac = BatchJacobian(fm, x)
    for _ in range(3):
        v = torch.randn(fm.n_params, generator=generator)
        expected = torch.func.jvp(lambda th: fm(th, x), (fm.theta,), (v,))[1]
        torch.testing.assert_close(jac.jvp(v), expected, rtol=1e-5, atol=1e-6)
    assert jac.jvp_method == "traced"


class Flatten(nn.Module):
    """Reshapes its input: traced on a contiguous batch that is a view, which a batch with
    other strides cannot replay."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 64)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.linear(x.reshape(x.shape[0], -1)).reshape(x.shape)


def test_memory_layout_is_part_of_the_key(ce_batch, generator):
    x, _ = ce_batch
    model = Flatten().double()
    fm = FlatModel(model)
    strided = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    for batch in (x, strided):
        jac = BatchJacobian(fm, batch)
        for _ in range(2):
            v = torch.randn(fm.n_params, generator=generator, dtype=x.dtype)
            expected = torch.func.jvp(lambda th, b=batch: fm(th, b), (fm.theta,), (v,))[1]
            torch.testing.assert_close(jac.jvp(v), expected, rtol=1e-10, atol=1e-12)
        assert jac.jvp_method == "traced"
    assert len(tangents._programs) == 2


def test_an_untraceable_structure_is_not_traced_again(ce_batch, generator, monkeypatch):
    x, _ = ce_batch
    traces = count_traces(monkeypatch)
    model = TensorAttribute().double()
    for _ in range(2):
        jac = BatchJacobian(FlatModel(model), x)
        jac.jvp(torch.randn(FlatModel(model).n_params, generator=generator, dtype=x.dtype))
        assert jac.jvp_method == "jvp"
    assert len(traces) == 1


class Constant(nn.Module):
    """An output that does not depend on the parameters: J = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.ones(3))

    def forward(self, x: Tensor) -> Tensor:
        return 2.0 * x


def test_products_never_share_memory(ce_batch):
    """When J v does not depend on v the program's output is a kept value: copy it."""
    x, _ = ce_batch
    fm = FlatModel(Constant().double())
    program = tangents.cached_program(fm, x)
    push = program.bind(fm, x)
    first, second = push(torch.ones(3, dtype=x.dtype)), push(torch.ones(3, dtype=x.dtype))
    assert first.data_ptr() != second.data_ptr()
    first += 1.0
    assert torch.count_nonzero(push(torch.ones(3, dtype=x.dtype))) == 0


def test_cache_keeps_the_most_recent_programs(generator):
    fm = FlatModel(TinyConv(2).double())
    for size in range(2, 2 + tangents._CACHE_SIZE + 2):
        tangents.cached_program(fm, torch.zeros(1, 2, size, size, dtype=torch.float64))
    assert len(tangents._programs) == tangents._CACHE_SIZE
    assert tangents.is_cached(fm, torch.zeros(1, 2, size, size, dtype=torch.float64))
    assert not tangents.is_cached(fm, torch.zeros(1, 2, 2, 2, dtype=torch.float64))


@pytest.mark.parametrize("pad", [(1, 1, 1, 1), (2, 0, 1, 3), (0, 0, 2, 2)])
def test_wrap_pad_equals_builtin_circular_pad(pad, generator):
    x = torch.randn(2, 3, 5, 6, generator=generator)
    torch.testing.assert_close(
        _wrap_pad(x, pad), nn.functional.pad(x, pad, mode="circular"), rtol=0, atol=0
    )


@pytest.mark.parametrize("arch", [pytest.param("unet", marks=pytest.mark.slow), "vit"])
def test_the_counted_bytes_are_what_a_binding_keeps_and_a_product_adds(arch):
    """The cost estimate counts the program's memory from its trace (shapes only); here the
    same program runs and every tensor it creates is counted as it is made and freed
    (bench.live_memory). Reference figures before the counts existed: the paper ViT keeps
    1.8× what autograd saves, so a multiple of autograd's bytes cannot stand in for them."""
    from bench.live_memory import LiveTensorBytes
    from coherence.surrogates.registry import build_model

    torch.manual_seed(0)
    model = build_model(arch, "demo", channels=4, resolution=32).eval()
    fm = FlatModel(model)
    x = torch.randn(6, 4, 32, 32)
    program = tangents.cached_program(fm, x)
    v = torch.randn(fm.n_params)
    with LiveTensorBytes(ignore=[fm.theta, x, v, *fm.constants.values()]) as memory:
        push = program.bind(fm, x)
        kept = memory.live
        memory.reset_peak()
        out = push(v)
        added = memory.peak - kept
    assert program.boundary_bytes > 0 and program.tangent_bytes >= out.numel() * out.element_size()
    assert (program.boundary_bytes, program.tangent_bytes) == (kept, added)
