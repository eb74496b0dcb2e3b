"""UNet and ViT surrogates: presets, shapes, normalization, symmetry, torch.func, learning."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from coherence.errors import CheckpointError, RequestError
from coherence.surrogates.registry import (
    ARCHITECTURES,
    TRUST_CODE_ENV,
    build_model,
    model_config_dict,
    model_from_config_dict,
    parameter_count,
)
from coherence.surrogates.unet import UNetConfig
from coherence.surrogates.vit import ViTConfig

# Parameter-count windows per (arch, preset) at F = 4, built at the preset's home resolution.
EXPECTED_PARAMS = {
    ("unet", "paper"): (12.5e6, 14.5e6, 128),
    ("unet", "demo"): (0.2e6, 0.5e6, 32),
    ("vit", "paper"): (4.3e6, 4.7e6, 128),
    ("vit", "demo"): (0.1e6, 0.3e6, 32),
}
ALL_PRESETS = [(a, p) for a, spec in ARCHITECTURES.items() for p in spec.presets]
FD_RTOL = 1e-6  # central differences in float64 with step 1e-6: error O(h²) + O(eps/h)


def smooth_field(n: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random periodic fields from Fourier modes |k| ≤ 3 with 1/(1+|k|²) amplitudes."""
    grid = torch.arange(size) * (2 * math.pi / size)
    gx, gy = torch.meshgrid(grid, grid, indexing="ij")
    out = torch.zeros(n, channels, size, size)
    for kx in range(-3, 4):
        for ky in range(-3, 4):
            amp = torch.randn(2, n, channels, 1, 1, generator=generator) / (1 + kx * kx + ky * ky)
            phase = kx * gx + ky * gy
            out += amp[0] * torch.cos(phase) + amp[1] * torch.sin(phase)
    return out


def smse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """METHOD.md §3: mean of ((ŷ − y) / (RMS_xy(y) + 1e-6))² over examples, channels, pixels."""
    rms = target.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
    return ((pred - target) / (rms + 1e-6)).pow(2).mean()


def small_model(arch: str, channels: int = 3, size: int = 16) -> nn.Module:
    """Demo presets shrunk so float64 checks stay fast."""
    torch.manual_seed(0)
    if arch == "unet":
        return build_model("unet", channels=channels, resolution=size, base_width=8, groups=4)
    return build_model("vit", channels=channels, resolution=size, width=32, depth=2)


def with_random_normalization(model: nn.Module, seed: int = 1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    channels = model.config.channels
    model.set_normalization(
        torch.randn(channels, generator=g), torch.rand(channels, generator=g) + 0.5
    )
    return model


def functional_parts(arch: str) -> tuple[nn.Module, dict[str, torch.Tensor], dict]:
    """A float64 small model with random normalization, and the detached parameters and the
    buffers that torch.func.functional_call takes for it."""
    model = with_random_normalization(small_model(arch)).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    return model, params, dict(model.named_buffers())


# ---- registry and presets -------------------------------------------------------------------


def test_every_preset_has_an_expected_size():
    assert set(ALL_PRESETS) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize(("arch", "preset"), ALL_PRESETS)
def test_preset_parameter_count_and_one_forward(arch, preset):
    low, high, size = EXPECTED_PARAMS[(arch, preset)]
    model = build_model(arch, preset, channels=4, resolution=size)
    count = parameter_count(model)
    print(f"{arch}/{preset}: {count:,} parameters")
    assert low <= count <= high
    assert model.arch_name == arch and model.preset == preset
    assert isinstance(model.config, UNetConfig if arch == "unet" else ViTConfig)
    with torch.no_grad():
        y = model(torch.randn(1, 4, size, size))
    assert y.shape == (1, 4, size, size) and bool(torch.isfinite(y).all())


def test_vit_paper_count_matches_closed_form():
    w, depth, hidden, f, p, tokens = 256, 8, 512, 4, 4, (128 // 4) ** 2
    embed = f * w * 5 * 5 + w
    block = 2 * 2 * w + (3 * w * w + 3 * w) + (w * w + w) + (w * hidden + hidden) + (hidden * w + w)
    head = 2 * w + w * p * p * f + p * p * f
    expected = embed + tokens * w + depth * block + head
    assert parameter_count(build_model("vit", "paper", channels=4, resolution=128)) == expected


def test_builds_are_fresh_and_presets_untouched():
    before = {a: dict(spec.presets) for a, spec in ARCHITECTURES.items()}
    a = build_model("unet", channels=2, resolution=32, base_width=8, groups=4)
    b = build_model("unet", channels=2, resolution=32)
    assert a.config.base_width == 8 and b.config.base_width == 16
    assert {a: dict(spec.presets) for a, spec in ARCHITECTURES.items()} == before
    c = build_model("vit", channels=2, resolution=32)
    d = build_model("vit", channels=2, resolution=32)
    assert all(p is not q for p, q in zip(c.parameters(), d.parameters(), strict=True))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"arch": "resnet"}, ["resnet", "unet", "vit"]),
        ({"arch": "unet", "preset": "huge"}, ["huge", "paper", "demo"]),
        ({"arch": "vit", "depthh": 3}, ["depthh", "depth", "mlp_ratio"]),
        ({"arch": "unet", "resolution": 30}, ["30", "4"]),
        ({"arch": "vit", "resolution": 30}, ["resolution", "patch"]),
        ({"arch": "unet", "groups": 5}, ["groups", "5"]),
        ({"arch": "vit", "heads": 5}, ["heads", "width"]),
        ({"arch": "unet", "channel_mult": (1, 2)}, ["channel_mult", "n_down + 1"]),
        ({"arch": "unet", "channels": 0}, ["channels"]),
    ],
)
def test_bad_requests_name_the_input_and_the_choices(kwargs, words):
    args = {"preset": "demo", "channels": 2, "resolution": 32} | kwargs
    with pytest.raises(RequestError) as info:
        build_model(args.pop("arch"), args.pop("preset"), **args)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("config_cls", [UNetConfig, ViTConfig])
def test_config_json_round_trip_and_unknown_field(config_cls):
    config = ARCHITECTURES["unet" if config_cls is UNetConfig else "vit"].presets["demo"]
    assert config_cls.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(RequestError, match="colour"):
        config_cls.from_dict(config.to_dict() | {"colour": 1})


@pytest.mark.parametrize("arch", ["unet", "vit"])
def test_config_dict_rebuilds_the_same_function(arch):
    model = with_random_normalization(small_model(arch))
    data = json.loads(json.dumps(model_config_dict(model)))
    assert data["arch"] == arch and data["preset"] == "demo"
    twin = model_from_config_dict(data)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="unknown"):
        model_from_config_dict({"arch": "resnet", "config": {}})
    with pytest.raises(CheckpointError, match="invalid"):
        model_from_config_dict({"arch": arch, "config": data["config"] | {"channels": -1}})


CUSTOM_MODULE = """
import torch
from torch import nn

IMPORTED = True


class Tiny(nn.Module):
    arch_name = "coherence_custom_arch_probe:make"

    def __init__(self, channels, resolution, scale=2.0):
        super().__init__()
        self.config = {"channels": channels, "resolution": resolution, "scale": scale}
        self.weight = nn.Parameter(torch.full((channels, 1, 1), scale))

    def forward(self, x):
        return x * self.weight


def make(**config):
    return Tiny(**config)
"""


def test_custom_architecture_needs_trust_to_load(tmp_path, monkeypatch):
    name = "coherence_custom_arch_probe"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(CUSTOM_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(TRUST_CODE_ENV, raising=False)
    monkeypatch.delitem(sys.modules, name, raising=False)
    data = {"arch": f"{name}:make", "preset": None, "config": {"channels": 2, "resolution": 8}}
    with pytest.raises(CheckpointError) as info:
        model_from_config_dict(data)
    for word in ("--trust-code", TRUST_CODE_ENV, "unpickling"):
        assert word in str(info.value)
    assert name not in sys.modules  # refused before importing anything

    model = model_from_config_dict(data, trust_code=True)
    assert model_config_dict(model)["config"] == {"channels": 2, "resolution": 8, "scale": 2.0}
    monkeypatch.setenv(TRUST_CODE_ENV, "1")
    assert model_from_config_dict(data)(torch.ones(1, 2, 8, 8)).sum().item() == 2.0 * 2 * 8 * 8
    built = build_model(f"{name}:make", channels=3, resolution=8, scale=0.5)
    assert built.config["scale"] == 0.5
    # a module that names another architecture could not be rebuilt from its checkpoint
    with monkeypatch.context() as patch:
        patch.setattr(sys.modules[name].Tiny, "arch_name", "other:make")
        with pytest.raises(RequestError, match="must return a module with arch_name"):
            build_model(f"{name}:make", channels=3, resolution=8)
    with pytest.raises(RequestError, match="no presets"):
        build_model(f"{name}:make", "paper", channels=3, resolution=8)


def test_a_function_that_is_no_model_factory_is_refused_by_name():
    """`--arch os:system` raised a TypeError from deep inside the call."""
    with pytest.raises(RequestError, match=r"'os:system' cannot be called as factory\(channels=3"):
        build_model("os:system", channels=3, resolution=8)
    # nor when a checkpoint's config.json names it (trusted, it was a traceback there too)
    for arch in ("os:system", "json:dumps"):
        data = {"arch": arch, "preset": None, "config": {"channels": 3, "resolution": 8}}
        with pytest.raises(CheckpointError, match=rf"'{arch}' cannot be called as factory\(chan"):
            model_from_config_dict(data, trust_code=True)


# ---- shapes, normalization, dtypes ----------------------------------------------------------


@pytest.mark.parametrize("arch", ["unet", "vit"])
@pytest.mark.parametrize("channels", [2, 4])
@pytest.mark.parametrize("size", [16, 32, 48])
def test_forward_shape(arch, channels, size):
    model = build_model(arch, channels=channels, resolution=size)
    with torch.no_grad():
        y = model(torch.randn(3, channels, size, size))
    assert y.shape == (3, channels, size, size)


def test_wrong_input_shapes_are_rejected():
    unet, vit = small_model("unet"), small_model("vit")
    with pytest.raises(RequestError, match="divisible by 4"):
        unet(torch.randn(1, 3, 18, 18))
    with pytest.raises(
        RequestError, match=r"use data on the 16×16 grid, or train a ViT on this data"
    ):
        vit(torch.randn(1, 3, 32, 32))
    with pytest.raises(RequestError, match=r"\[N, 3, H, W\]"):
        unet(torch.randn(1, 2, 16, 16))
    assert unet(torch.randn(1, 3, 16, 32)).shape == (1, 3, 16, 32)  # non-square is fine


@pytest.mark.parametrize("arch", ["unet", "vit"])
def test_physical_normalization_conjugates_the_network(arch):
    """With statistics (μ, σ): model(σ·z + μ) = σ·net(z) + μ, net = the same weights at (0, 1)."""
    plain = small_model(arch).double()
    scaled = small_model(arch).double()
    scaled.load_state_dict(plain.state_dict())
    mean = torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)
    std = torch.tensor([2.0, 0.1, 5.0], dtype=torch.float64)
    scaled.set_normalization(mean, std)
    z = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    view = (1, 3, 1, 1)
    expected = plain(z) * std.view(view) + mean.view(view)
    torch.testing.assert_close(scaled(z * std.view(view) + mean.view(view)), expected)
    assert not torch.allclose(scaled(z), plain(z))
    torch.testing.assert_close(scaled.state_dict()["state_std"], std)


@pytest.mark.parametrize(
    ("mean", "std", "words"),
    [
        ([0.0, 0.0], [1.0, 1.0, 1.0], ["mean", "[3]"]),
        ([0.0, math.nan, 0.0], [1.0, 1.0, 1.0], ["mean", "NaN"]),
        ([0.0, 0.0, 0.0], [1.0, 0.0, 1.0], ["std", "> 0"]),
        ([0.0, 0.0, 0.0], [1.0, math.inf, 1.0], ["std", "inf"]),
    ],
)
def test_set_normalization_validates(mean, std, words):
    model = small_model("unet")
    with pytest.raises(RequestError) as info:
        model.set_normalization(torch.tensor(mean), torch.tensor(std))
    for word in words:
        assert word in str(info.value)
    torch.testing.assert_close(model.state_std, torch.ones(3))  # unchanged


@pytest.mark.parametrize("arch", ["unet", "vit"])
def test_float64_and_no_batchnorm(arch):
    for preset in ARCHITECTURES[arch].presets:
        model = build_model(arch, preset, channels=4, resolution=128)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
        assert norms == []
    model = with_random_normalization(small_model(arch)).double()
    y = model(torch.randn(2, 3, 16, 16, dtype=torch.float64))
    assert y.dtype == torch.float64 and model.state_mean.dtype == torch.float64
    model.set_normalization([0.0, 1.0, 2.0], [1.0, 1.0, 1.0])
    assert model.state_mean.dtype == torch.float64


# ---- symmetry ---------------------------------------------------------------------------------


def test_unet_commutes_with_shifts_by_the_downsampling_factor():
    model = with_random_normalization(small_model("unet")).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    y = model(x)
    for shift in [(4, 0), (0, 8), (12, -4)]:
        rolled = model(torch.roll(x, shift, dims=(-2, -1)))
        torch.testing.assert_close(rolled, torch.roll(y, shift, dims=(-2, -1)), rtol=0, atol=1e-10)
    # Shift by one pixel: the stride-2 stages break it (reported, not asserted).
    defect = (model(torch.roll(x, 1, dims=-1)) - torch.roll(y, 1, dims=-1)).abs().max()
    print(f"UNet shift-by-1 equivariance defect: {defect.item():.3e} (max |y| {y.abs().max():.2f})")


# ---- torch.func -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["unet", "vit"])
def test_vmap_over_examples_matches_batched_forward(arch):
    model, params, buffers = functional_parts(arch)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)

    def predict_one(params, buffers, xi):  # xi (F, H, W) → (F, H, W)
        return functional_call(model, (params, buffers), (xi.unsqueeze(0),)).squeeze(0)

    per_example = vmap(predict_one, in_dims=(None, None, 0))  # params shared, batch over x
    torch.testing.assert_close(per_example(params, buffers, x), model(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ["unet", "vit"])
def test_per_example_gradients_match_a_loop(arch):
    """vmap(grad) per example = autograd one example at a time (no coupling across the batch)."""
    model, params, buffers = functional_parts(arch)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    y = torch.randn(3, 3, 16, 16, dtype=torch.float64)

    def loss_one(params, buffers, xi, yi):  # one example (F, H, W) → scalar SMSE
        pred = functional_call(model, (params, buffers), (xi.unsqueeze(0),))
        return smse(pred, yi.unsqueeze(0))

    per_example_grad = vmap(grad(loss_one), in_dims=(None, None, 0, 0))
    grads = per_example_grad(params, buffers, x, y)
    for n in range(3):
        model.zero_grad()
        smse(model(x[n : n + 1]), y[n : n + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name][n], p.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arch", ["unet", "vit"])
def test_jvp_and_vjp_match_finite_differences_and_each_other(arch):
    """J v from jvp equals the central difference; ⟨u, J v⟩ = ⟨Jᵀ u, v⟩ with vjp."""
    model, params, buffers = functional_parts(arch)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    tangent = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}

    def predict(p):
        return functional_call(model, (p, buffers), (x,))

    y, jv = jvp(predict, (params,), (tangent,))
    h = 1e-6
    plus = predict({k: v + h * tangent[k] for k, v in params.items()})
    minus = predict({k: v - h * tangent[k] for k, v in params.items()})
    torch.testing.assert_close(jv, (plus - minus) / (2 * h), rtol=FD_RTOL, atol=FD_RTOL)

    u = torch.randn(y.shape, generator=g, dtype=y.dtype)
    _, pullback = vjp(predict, params)
    (jtu,) = pullback(u)
    lhs = (u * jv).sum()
    rhs = sum((jtu[k] * tangent[k]).sum() for k in params)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=0)


# ---- learning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["unet", "vit"])
@pytest.mark.slow
def test_demo_preset_overfits_a_small_batch(arch):
    """8 smooth fields → their periodic shift by (1, 2) pixels: SMSE from ≈ 1 to < 1e-2."""
    g = torch.Generator().manual_seed(0)
    x = smooth_field(8, 2, 16, g)
    y = torch.roll(x, (1, 2), dims=(-2, -1))
    torch.manual_seed(0)
    model = build_model(arch, channels=2, resolution=16)
    model.set_normalization(x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = smse(model(x), y).item()
    for _ in range(200):
        optimizer.zero_grad()
        loss = smse(model(x), y)
        loss.backward()
        optimizer.step()
    final = smse(model(x), y).item()
    print(f"{arch} demo overfit SMSE {start:.3f} → {final:.2e}")
    assert start > 0.5 and final < 1e-2
