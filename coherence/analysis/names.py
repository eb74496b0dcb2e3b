"""Download file names that encode the selection: two windows, estimators or damping values
never export to the same name.

``selection_tag`` reads the readable parts (dataset, window, estimator, λ) and adds six hex
digits of a hash over the whole URL form (classes, trajectories, responses, checkpoints…),
so selections that differ only there differ in the name too. ``models_tag`` names the
panels that read no analysis (training curves, rollouts): no window, estimator or λ, which
would name the same file differently.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """Letters, digits, '_', '.', '-' only (anything else becomes '_')."""
    return _UNSAFE.sub("_", text).strip("_") or "export"


def group_stem(label: str) -> str:
    """A model group's label as a file-name part ('UNet', 'ViT s10')."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)


def groups_tag(labels: Sequence[str]) -> str:
    """The view's model groups in a file name: 'UNet', or 'UNet-vs-ViT' in compare mode
    (two groups' files had differed by a hash alone)."""
    return "-vs-".join(group_stem(label) for label in labels)


def selection_tag(selection: Any) -> str:
    """'<dataset>_w<start>-<end>_<estimator>_lam<λ>_<hash6>' for a dashboard Selection (no
    λ for euclidean, which does not use it); start and end are the snapshot indices the
    sidebar's window slider shows (the window's transitions run from snapshot start to
    snapshot end)."""
    first = selection.t_start
    last = selection.t_start + selection.n_steps
    digest = hashlib.sha256(json.dumps(selection.to_query(), sort_keys=True).encode()).hexdigest()[
        :6
    ]
    # euclidean (M = I) uses no λ: its files named one as if it mattered (a walk-through)
    damping = "" if selection.estimator == "euclidean" else f"_lam{selection.damping:.0e}"
    tag = f"{selection.dataset}_w{first}-{last}_{selection.estimator}{damping}_{digest}"
    return safe_name(tag.replace("e-0", "e-").replace("e+0", "e+"))


ROLLOUT_KEYS = ("data", "ckpt", "vs", "epoch", "classes", "traj")  # what rollouts read
TRAINING_KEYS = ("data", "ckpt", "vs")  # what the training curves read


def models_tag(selection: Any, keys: tuple[str, ...] = ROLLOUT_KEYS) -> str:
    """'<dataset>_<hash6>' for a panel that reads the checkpoints and data but no analysis:
    the hash covers only the parts of the URL form in ``keys`` (what the panel reads), so
    another λ (or, for training curves, another class) keeps the name."""
    query = {key: value for key, value in selection.to_query().items() if key in keys}
    digest = hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:6]
    return safe_name(f"{selection.dataset}_{digest}")
