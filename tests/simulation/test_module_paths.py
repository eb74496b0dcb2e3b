"""Names that moved into smaller modules still import from where callers always found them."""

from __future__ import annotations

import importlib

import pytest

MOVED = [
    ("coherence.simulation.wellformat", "coherence.simulation.wellschema", "validate_well_file"),
    ("coherence.simulation.wellformat", "coherence.simulation.wellschema", "CLASS_ATTR"),
    ("coherence.simulation.wellformat", "coherence.simulation.wellwriter", "write_well_file"),
    ("coherence.simulation.wellformat", "coherence.simulation.wellwriter", "WellWriter"),
    ("coherence.simulation.dataset", "coherence.simulation.generate", "generate_dataset"),
    ("coherence.simulation.dataset", "coherence.simulation.generate", "simulate_chunk"),
    ("coherence.simulation.classes", "coherence.simulation.samplers", "NS_RMS_SPEED"),
    (
        "coherence.simulation.importers.pdegym",
        "coherence.simulation.importers.pdegym_source",
        "open_source",
    ),
    (
        "coherence.surrogates.checkpoint",
        "coherence.surrogates.checkpoint_config",
        "CheckpointConfig",
    ),
    ("coherence.surrogates.checkpoint", "coherence.surrogates.checkpoint_config", "new_config"),
]


@pytest.mark.parametrize(("old", "new", "name"), MOVED)
def test_moved_name_is_the_same_object_at_its_old_path(old: str, new: str, name: str) -> None:
    assert getattr(importlib.import_module(old), name) is getattr(
        importlib.import_module(new), name
    )


def test_dataset_module_does_not_know_names_it_never_had() -> None:
    dataset = importlib.import_module("coherence.simulation.dataset")
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        dataset.not_a_name  # noqa: B018
