"""Named architectures and presets, and the config dict a checkpoint stores.

``build_model("unet", "paper", channels=4, resolution=128)`` returns a fresh model; presets
are frozen configs and every build goes through ``dataclasses.replace``, so no caller can
change a stored preset. A checkpoint's ``config.json`` holds ``model_config_dict(model)``;
``model_from_config_dict`` rebuilds the module from it with nothing else.

Custom architectures are named ``"package.module:factory"``. The factory is called with the
config fields as keywords (``factory(channels=..., resolution=..., **overrides)`` when
building) and must return an ``nn.Module`` with ``arch_name`` set to that same string and a
``config`` (a dataclass with ``to_dict()``, or a dict) whose fields rebuild it. Importing a
module runs its code, so a checkpoint naming one is only honoured on explicit opt-in.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from coherence.errors import CheckpointError, CoherenceError, RequestError
from coherence.surrogates.unet import UNet, UNetConfig
from coherence.surrogates.vit import ViT, ViTConfig

TRUST_CODE_ENV = "COHERENCE_TRUST_CODE"
_CUSTOM_ARCH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Architecture:
    """One architecture: its module class, config class and frozen named presets."""

    name: str
    model_cls: type[nn.Module]
    config_cls: type
    presets: Mapping[str, Any]  # preset name → frozen config (channels/resolution replaced)
    uses_resolution: bool  # whether the config has a `resolution` field

    def check_preset(self, preset: str) -> None:
        if preset not in self.presets:
            raise RequestError(
                f"unknown {self.name} preset {preset!r}; choose one of: {', '.join(self.presets)}"
            )

    def config(self, preset: str, *, channels: int, resolution: int, **overrides: Any):
        """A new config: the preset with channels, resolution and overrides replaced."""
        self.check_preset(preset)
        fields = [f.name for f in dataclasses.fields(self.config_cls)]
        fixed = {"channels", "resolution"}
        unknown = sorted(k for k in overrides if k not in fields or k in fixed)
        if unknown:
            allowed = ", ".join(f for f in fields if f not in fixed)
            raise RequestError(
                f"unknown {self.name} override(s) {unknown}; allowed overrides: {allowed} "
                "(channels and resolution are separate arguments)"
            )
        sizes = {"channels": channels}
        if self.uses_resolution:
            sizes["resolution"] = resolution
        return dataclasses.replace(self.presets[preset], **sizes, **overrides)


# Stored presets: frozen, and only ever copied through dataclasses.replace.
UNET_PRESETS: Mapping[str, UNetConfig] = MappingProxyType(
    {
        # ≈ 13.5M parameters at F = 4 (widths 24, 48, 96, 192, 384; 8×8 tokens at 128²).
        "paper": UNetConfig(4, 24, 4, (1, 2, 4, 8, 16), blocks_per_stage=3, attention_heads=8),
        # ≈ 0.27M parameters at F = 4 (widths 16, 32, 64; 8×8 tokens at 32²).
        "demo": UNetConfig(4, 16, 2, (1, 2, 4), blocks_per_stage=1, attention_heads=4),
    }
)
VIT_PRESETS: Mapping[str, ViTConfig] = MappingProxyType(
    {
        # ≈ 4.5M parameters at F = 4, 128² (1024 tokens).
        "paper": ViTConfig(4, 128, patch=4, width=256, depth=8, heads=8, mlp_ratio=2.0),
        # ≈ 0.15M parameters at F = 4, 32² (64 tokens).
        "demo": ViTConfig(4, 32, patch=4, width=64, depth=4, heads=4, mlp_ratio=2.0),
    }
)
ARCHITECTURES: Mapping[str, Architecture] = MappingProxyType(
    {
        "unet": Architecture("unet", UNet, UNetConfig, UNET_PRESETS, uses_resolution=False),
        "vit": Architecture("vit", ViT, ViTConfig, VIT_PRESETS, uses_resolution=True),
    }
)


def _architecture(arch: str) -> Architecture:
    if arch not in ARCHITECTURES:
        raise RequestError(
            f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)} "
            "(or a custom 'package.module:factory')"
        )
    return ARCHITECTURES[arch]


def check_arch(arch: str, preset: str) -> None:
    """Refuse an unknown built-in architecture or preset before any work (a training
    printed its transitions first); a custom factory is checked when it is imported."""
    if not _CUSTOM_ARCH.match(arch):
        _architecture(arch).check_preset(preset)


def _check_size(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"{name} = {value!r}; it must be a positive integer")


def _call_factory(factory: Any, arch: str, fields: dict[str, Any], *, error: type) -> Any:
    """``factory(**fields)``, its signature checked first, so a function that is no model
    factory (os:system, json:dumps) is refused by name before it is called, whether a user
    named it (--arch) or a trusted checkpoint's config.json did."""
    try:
        inspect.signature(factory).bind(**fields)
    except TypeError as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        raise error(
            f"custom architecture {arch!r} cannot be called as factory({shown}) ({exc}); "
            "name a function that takes those keywords and returns an nn.Module"
        ) from exc
    except ValueError:  # no signature to read (some builtins): the call will tell
        pass
    return factory(**fields)


def build_model(
    arch: str, preset: str = "demo", *, channels: int, resolution: int, **overrides: Any
) -> nn.Module:
    """A freshly initialised model for an L×L grid with F = channels state channels.

    Built-in architectures take a preset plus overrides of config fields. A custom
    ``"package.module:factory"`` is imported (the caller named it, so no opt-in is asked) and
    called as ``factory(channels=..., resolution=..., **overrides)``; it has no presets.
    """
    _check_size("channels", channels)
    _check_size("resolution", resolution)
    if _CUSTOM_ARCH.match(arch):
        if preset != "demo":
            raise RequestError(
                f"custom architecture {arch!r} has no presets (got preset={preset!r}); "
                "pass its settings as overrides instead"
            )
        factory = _import_factory(arch, error=RequestError)
        fields = {"channels": channels, "resolution": resolution, **overrides}
        model = _call_factory(factory, arch, fields, error=RequestError)
        return _checked_custom(model, arch, error=RequestError)
    spec = _architecture(arch)
    config = spec.config(preset, channels=channels, resolution=resolution, **overrides)
    model = spec.model_cls(config)
    model.check_spatial(resolution, resolution)
    model.preset = preset
    return model


def model_config_dict(model: nn.Module) -> dict[str, Any]:
    """JSON-ready {"arch", "preset", "config"} from which the model can be rebuilt."""
    arch = getattr(model, "arch_name", None)
    config = getattr(model, "config", None)
    if not isinstance(arch, str) or config is None:
        raise RequestError(
            f"{type(model).__name__} has no `arch_name` and `config`; build it with "
            "build_model or give the custom class both attributes"
        )
    fields = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {"arch": arch, "preset": getattr(model, "preset", None), "config": fields}


def model_from_config_dict(data: Mapping[str, Any], *, trust_code: bool = False) -> nn.Module:
    """Rebuild an (untrained) model from ``model_config_dict`` output, e.g. a checkpoint's.

    A custom ``"package.module:factory"`` arch is imported only with ``trust_code=True`` or
    the environment variable COHERENCE_TRUST_CODE=1: importing runs arbitrary code.
    """
    if not isinstance(data, Mapping) or not {"arch", "config"} <= set(data):
        raise CheckpointError(
            f"model config {data!r} must be a mapping with keys 'arch' and 'config' "
            "(as written by model_config_dict); re-save the checkpoint"
        )
    arch, fields = data["arch"], data["config"]
    if not isinstance(fields, Mapping):
        raise CheckpointError(f"model config 'config' = {fields!r} must be a mapping of fields")
    if isinstance(arch, str) and _CUSTOM_ARCH.match(arch):
        if not (trust_code or os.environ.get(TRUST_CODE_ENV) == "1"):
            raise CheckpointError(
                f"checkpoint names the custom architecture {arch!r}; importing it runs that "
                "module's code, as unpickling would. If you trust its source, set "
                f"{TRUST_CODE_ENV}=1 (every command and the dashboard), or pass --trust-code "
                "to coherence analyze (trust_code=True in Python)"
            )
        factory = _import_factory(arch, error=CheckpointError)
        model = _call_factory(factory, arch, dict(fields), error=CheckpointError)
        model = _checked_custom(model, arch, error=CheckpointError)
    else:
        if arch not in ARCHITECTURES:
            raise CheckpointError(
                f"checkpoint architecture {arch!r} is unknown; known: "
                f"{', '.join(ARCHITECTURES)} or a custom 'package.module:factory'"
            )
        spec = ARCHITECTURES[arch]
        try:
            model = spec.model_cls(spec.config_cls.from_dict(dict(fields)))
        except (CoherenceError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {arch} config is invalid: {exc}") from exc
    model.preset = data.get("preset")
    return model


def _import_factory(arch: str, *, error: type[CoherenceError]):
    module_name, _, attr = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(
            f"custom architecture {arch!r}: cannot import module {module_name!r} ({exc}); "
            "install it or add it to PYTHONPATH"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise error(f"custom architecture {arch!r}: {module_name} has no callable {attr!r}")
    return factory


def _checked_custom(model: Any, arch: str, *, error: type[CoherenceError]) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise error(f"custom factory {arch!r} returned {type(model).__name__}, not nn.Module")
    if getattr(model, "arch_name", None) != arch or getattr(model, "config", None) is None:
        raise error(
            f"custom factory {arch!r} must return a module with arch_name = {arch!r} and a "
            "`config` (dataclass with to_dict(), or dict) so checkpoints can rebuild it"
        )
    return model


def parameter_count(model: nn.Module) -> int:
    """Number of trainable scalars P (the width of every Jacobian J_n)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
