"""Training snapshots: the weights of chosen epochs, kept inside the checkpoint directory.

    <checkpoint>/epochs/0004/   config.json, model.safetensors, history.json (epochs 1–4),
                                manifest.json: a complete checkpoint of its own

A snapshot is the same file set as its checkpoint minus the optimizer state, so it loads
wherever a checkpoint does (``checkpoint.load``, ``coherence analyze --checkpoint``, the
dashboard). It is staged beside ``epochs/NNNN`` and committed by one rename
(``fileset.write_new_directory``): a kill leaves no snapshot of that epoch or a whole one.
Snapshots are written before the epoch's checkpoint save, so a resume never lacks one it
passed; ``prune_after`` removes those a killed run wrote past the saved history (the resumed
run writes them again, bit-identical, because training resumes bit-for-bit).

Why the config is the checkpoint's own: cache keys hash config.json and the weights, so the
analysis of the last epoch's snapshot is the checkpoint's analysis (one cache entry).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from coherence.errors import RequestError
from coherence.surrogates import fileset

EPOCHS_DIR = "epochs"
_NAME = re.compile(r"[0-9]{4,6}")


def default_keep(epochs: int) -> tuple[int, ...]:
    """Powers of two below ``epochs``, plus ``epochs`` itself: 1, 2, 4, 8, 12 for 12."""
    out, power = [], 1
    while power < epochs:
        out.append(power)
        power *= 2
    return (*out, epochs)


def resolve_keep(keep: Sequence[int] | None, epochs: int) -> tuple[int, ...]:
    """The epochs to snapshot: ``keep`` (None: ``default_keep``) within 1..epochs, sorted."""
    chosen = default_keep(epochs) if keep is None else keep
    return tuple(sorted({int(e) for e in chosen if 1 <= int(e) <= epochs}))


def parse_keep_epochs(text: str) -> tuple[int, ...] | None:
    """'1,2,4,8' → (1, 2, 4, 8); 'default' (or '') → None (powers of two plus the last);
    'none' → () (no snapshots). Anything else: RequestError with the accepted forms."""
    value = text.strip().lower()
    if value in ("", "default"):
        return None
    if value == "none":
        return ()
    try:
        epochs = tuple(int(part) for part in value.split(","))
    except ValueError:
        epochs = ()
    if not epochs or any(e < 1 for e in epochs):
        raise RequestError(
            f"--keep-epochs {text!r}: give positive epochs separated by commas (e.g. "
            "1,2,4,8,16), 'default' (powers of two plus the last) or 'none'"
        )
    return tuple(sorted(set(epochs)))


def snapshot_name(epoch: int) -> str:
    return f"{epoch:04d}"


def split_snapshot(directory: str | Path) -> tuple[Path, int | None]:
    """(checkpoint, epoch) of a snapshot's path ``<checkpoint>/epochs/NNNN``; the path itself
    and None for anything else."""
    path = Path(directory)
    if path.parent.name == EPOCHS_DIR and path.name.isdigit() and int(path.name) >= 1:
        return path.parent.parent, int(path.name)
    return path, None


def display_name(directory: str | Path) -> str:
    """A checkpoint's name in progress lines: 'unet_s10 epoch 4' for a snapshot (its folder
    alone, '0004', named no model), else the folder's name."""
    checkpoint, epoch = split_snapshot(directory)
    return checkpoint.name if epoch is None else f"{checkpoint.name} epoch {epoch}"


def checkpoint_labels(paths: Sequence[str | Path]) -> tuple[str, ...]:
    """One distinct name per checkpoint of an analysis: ``display_name``, and where two still
    agree (x/a and y/a) as many trailing parts of their paths as tell them apart. Why: the
    result's seeds and its provenance's fingerprints are keyed by name, and two snapshots of
    one epoch ('0002') or two folders 'a' became one entry, a fingerprint lost."""
    given = [Path(p) for p in paths]
    labels = [display_name(p) for p in given]
    for depth in range(2, max((len(p.parts) for p in given), default=0) + 1):
        clash = {label for label in labels if labels.count(label) > 1}
        if not clash:
            break
        labels = [
            "/".join(p.parts[-depth:]) if label in clash else label
            for p, label in zip(given, labels, strict=True)
        ]
    return tuple(labels)


def snapshot_dir(checkpoint: str | Path, epoch: int) -> Path:
    return Path(checkpoint) / EPOCHS_DIR / snapshot_name(epoch)


def list_snapshots(checkpoint: str | Path) -> dict[int, Path]:
    """Committed snapshots of a checkpoint, epoch → directory, ascending. Staging leftovers,
    symbolic links and foreign names are ignored: only what a commit rename produced."""
    parent = Path(checkpoint) / EPOCHS_DIR
    if not parent.is_dir() or parent.is_symlink():
        return {}
    found = {}
    for path in parent.iterdir():
        committed = path.is_dir() and (path / fileset.MANIFEST_FILE).is_file()
        if _NAME.fullmatch(path.name) and committed and not path.is_symlink():
            found[int(path.name)] = path
    return dict(sorted(found.items()))


def write_snapshot(checkpoint: str | Path, epoch: int, files: dict[str, bytes]) -> bool:
    """Commit ``files`` as the snapshot of ``epoch`` (kept if it exists: False)."""
    return fileset.write_new_directory(
        snapshot_dir(checkpoint, epoch), files, {"epochs": epoch, "snapshot": True}
    )


def snapshot_files(checkpoint: str | Path) -> dict[int, dict[str, bytes]]:
    """Every committed snapshot's files, epoch → {name: bytes}, its manifest excluded
    (``write_snapshot`` writes a new one): how a training on another machine (a Ray worker)
    sends its snapshots back with the checkpoint."""
    return {
        epoch: {
            path.name: path.read_bytes()
            for path in sorted(directory.iterdir())
            if path.is_file() and path.name != fileset.MANIFEST_FILE
        }
        for epoch, directory in list_snapshots(checkpoint).items()
    }


def prune_after(checkpoint: str | Path, epoch: int) -> list[int]:
    """Delete snapshots of epochs after ``epoch`` (written by a run killed before its
    checkpoint save); returns the epochs removed."""
    removed = []
    for number, path in list_snapshots(checkpoint).items():
        if number > epoch:
            shutil.rmtree(path)
            removed.append(number)
    return removed


def common_epochs(checkpoints: Iterable[str | Path]) -> tuple[int, ...]:
    """Epochs snapshotted in every one of ``checkpoints`` (the seeds of a model group)."""
    sets = [set(list_snapshots(c)) for c in checkpoints]
    return tuple(sorted(set.intersection(*sets))) if sets else ()
