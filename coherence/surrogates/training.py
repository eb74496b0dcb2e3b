"""One-step teacher-forced training of a surrogate on a Well dataset (METHOD.md §3).

Seeded initialization and shuffling (epoch e shuffles with seed·100003 + e, so a resumed run
sees the same batches as an uninterrupted one), SMSE loss, AdamW, validation SMSE per epoch,
a checkpoint every ``checkpoint_every`` epochs, snapshots of the ``keep_epochs`` (default:
powers of two plus the last) under ``epochs/NNNN``, and resume from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from coherence.analysis.vocabulary import Device
from coherence.errors import CheckpointError, RequestError
from coherence.io import check_device, resolve_device
from coherence.resources import USABLE_SHARE
from coherence.simulation.dataset import DatasetInfo, open_dataset
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates import snapshots
from coherence.surrogates.losses import evaluate_smse, smse
from coherence.surrogates.pairs import TransitionPairs
from coherence.surrogates.registry import ARCHITECTURES, build_model, check_arch
from coherence.wording import plural

Progress = Callable[[int, int, float, float], None]  # (epoch, epochs, fraction, train loss)
DEFAULT_TRANSITIONS = 16  # the paper's T: one-step pairs per trajectory when none is asked
MAX_EPOCHS, MAX_BATCH_SIZE = 100_000, 65_536  # beyond: a typo, not a training run
# build_model's own arguments, which no architecture override may name
BUILD_ARGUMENTS = {
    name
    for name, parameter in inspect.signature(build_model).parameters.items()
    if parameter.kind is not inspect.Parameter.VAR_KEYWORD
}


@dataclass(frozen=True)
class TrainingArgs:
    """Arguments of one training run (stored in the checkpoint's config.json)."""

    arch: str = "unet"  # unet | vit | package.module:factory
    preset: str = "demo"  # demo | paper
    classes: tuple[str, ...] = ()  # empty: every class of the train split
    seed: int = 42
    epochs: int = 20
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 1e-4
    transitions: int | None = None  # pairs (s_t, s_t+1), t < transitions; None: all, ≤ 16
    checkpoint_every: int = 1
    # epochs whose weights are kept under epochs/NNNN; None: powers of two plus the last
    keep_epochs: tuple[int, ...] | None = None
    device: Device = Device.AUTO
    overrides: dict[str, Any] = field(default_factory=dict)  # architecture config fields

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "transitions", "checkpoint_every"):
            value = getattr(self, name)
            if name == "transitions" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RequestError(f"{name}={value!r}: must be a positive integer")
        if self.keep_epochs is not None and any(
            isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in self.keep_epochs
        ):
            raise RequestError(f"keep_epochs={self.keep_epochs!r}: must be positive integers")
        if self.epochs > MAX_EPOCHS:
            raise RequestError(f"epochs={self.epochs}: too large; give at most {MAX_EPOCHS:,}")
        if self.batch_size > MAX_BATCH_SIZE:
            raise RequestError(
                f"batch_size={self.batch_size}: too large; give a batch of at most "
                f"{MAX_BATCH_SIZE:,} examples"
            )
        if len(set(self.classes)) != len(self.classes):  # its pairs were loaded twice
            raise RequestError(
                f"classes {','.join(self.classes)}: name each class once (or leave --classes "
                "out for every class of the train split)"
            )
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise RequestError(f"lr={self.lr}: must be a positive number (default 5e-4)")
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise RequestError(f"weight_decay={self.weight_decay}: must be ≥ 0 (default 1e-4)")
        if fixed := sorted(BUILD_ARGUMENTS & set(self.overrides)):
            # build_model takes them as its own arguments: a raw TypeError came out of it
            raise RequestError(
                f"overrides {fixed}: the architecture and preset are arguments of their own, "
                "and the dataset decides the model's channels and resolution; leave them out "
                "of the overrides"
            )
        object.__setattr__(self, "device", check_device(self.device))  # the one device rule
        check_arch(self.arch, self.preset)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes)
        data["device"] = self.device.value
        if self.keep_epochs is None:
            del data["keep_epochs"]  # the default rule; configs of older versions match
        else:
            data["keep_epochs"] = list(self.keep_epochs)
        return data


def default_transitions(snapshots: int) -> int:
    """One-step pairs per trajectory when none is asked: every one, at most the paper's T."""
    return min(DEFAULT_TRANSITIONS, snapshots - 1)


def resolve_transitions(args: TrainingArgs, info: DatasetInfo, log=None) -> TrainingArgs:
    """``args`` with ``transitions`` set: an explicit request is kept (``TransitionPairs``
    refuses one the dataset cannot fit); none asked takes every transition the dataset
    has, at most DEFAULT_TRANSITIONS, and says so."""
    if args.transitions is not None:
        return args
    available = len(info.times) - 1
    if available < 1:
        raise RequestError(
            f"{info.root} has {len(info.times)} snapshot per trajectory; training needs at "
            "least 2 (one transition): simulate more snapshots"
        )
    chosen = default_transitions(len(info.times))
    if log:
        scope = (
            f"all {available} the dataset has"
            if chosen == available
            else f"the first {chosen} of {available}"
        )
        log(f"using {chosen} transitions per trajectory ({scope}; set --transitions to choose)")
    return replace(args, transitions=chosen)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """AdamW state as flat named tensors (safetensors cannot hold Python objects)."""
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().clone()
    return out


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def _check_steps(out: Path, state: dict[str, Tensor], expected: int, epochs: int) -> None:
    """Refuse optimizer moments of another epoch than the history (a checkpoint written
    file by file, before saves were atomic, and killed between two files)."""
    found = sorted({int(v) for k, v in state.items() if k.endswith(".step")})
    if found and found != [expected]:
        raise CheckpointError(
            f"{out}: the optimizer state has taken {found[0]} steps but {ckpt.HISTORY_FILE} "
            f"records {epochs} epochs ({expected} steps): an earlier save was interrupted "
            "between files, so resuming would repeat or skip an epoch; delete the "
            "directory (or choose a new --out) and train again"
        )


def validation(pairs: TransitionPairs, device: torch.device) -> Callable[[nn.Module], float]:
    """Mean one-step SMSE over the validation pairs: on the device once when they are in
    memory, batch by batch from the files when streamed."""
    if not pairs.streamed:
        inputs, targets = pairs.inputs.to(device), pairs.targets.to(device)
        return lambda model: evaluate_smse(model, inputs, targets)

    def streamed(model: nn.Module) -> float:
        total = 0.0
        for start in range(0, len(pairs), 64):
            x, y = pairs.get(torch.arange(start, min(start + 64, len(pairs))))
            total += evaluate_smse(model, x.to(device), y.to(device)) * x.shape[0]
        return total / max(len(pairs), 1)

    return streamed


def _new_model(
    info: DatasetInfo, args: TrainingArgs, train_pairs: TransitionPairs, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The seeded model, normalized by the training pairs' channel statistics, and its
    optimizer (a resumed run builds them too, then replaces both from the checkpoint)."""
    torch.manual_seed(args.seed)
    model = build_model(
        args.arch,
        args.preset,
        channels=len(info.channels),
        resolution=info.height,
        **args.overrides,
    )
    mean, std = train_pairs.channel_stats()
    model.set_normalization(mean, std.clamp_min(1e-6))
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    return model, optimizer


def check_checkpoint_folder(out: Path) -> None:
    """Refuse an --out folder that holds something other than a checkpoint (a dataset, a
    project): training wrote its weights, history and snapshots in among those files; one
    inside another checkpoint: training into a snapshot (epochs/0002) replaced its weights
    with another model's, trained on without its optimizer state, and a new model inside a
    checkpoint's epochs/ was listed as one of its snapshots; and one among a dataset's files
    (its data/ tree, or a workspace dataset's folder, where no checkpoint is listed). A
    project that holds data/ and its checkpoints side by side is no dataset's folder."""
    if out.exists() and not out.is_dir():  # found only after an epoch, at the first save
        raise RequestError(f"--out {out}: a file, not a folder; choose a new folder for --out")
    _refuse_inside_a_checkpoint(out)
    _refuse_inside_a_dataset(out)
    if not out.is_dir() or (out / ckpt.CONFIG_FILE).is_file():
        return
    ours = {*ckpt.SET_FILES, ckpt.MANIFEST_FILE, snapshots.EPOCHS_DIR}
    foreign = sorted(
        entry.name
        for entry in out.iterdir()
        if entry.name not in ours and not entry.name.startswith(".")  # staging, temp files
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise RequestError(
            f"--out {out}: the folder holds other files ({shown}) and no checkpoint; training "
            f"would write among them. Choose a new or an empty folder for --out"
        )


def _refuse_inside_a_checkpoint(out: Path) -> None:
    from coherence.workspace import enclosing_checkpoint

    real = out.resolve()
    owner = enclosing_checkpoint(real)
    if owner is None or owner == real:  # none, or a resume of the checkpoint itself
        return
    epoch = snapshots.split_snapshot(real)[1]
    if epoch is not None and (real / ckpt.CONFIG_FILE).is_file():
        what = (
            f"a snapshot of the checkpoint {owner} (its weights of epoch {epoch}, kept as "
            f"they were); to train on, resume {owner} itself with a larger --epochs"
        )
    elif epoch is not None:
        what = f"in the snapshots folder of the checkpoint {owner}"
    else:
        what = f"inside the checkpoint {owner}"
    raise RequestError(
        f"--out {out}: {what}; a new model needs a folder of its own (e.g. {owner.parent / 'NAME'})"
    )


def _refuse_inside_a_dataset(out: Path) -> None:
    from coherence.simulation.dataset import dataset_files

    real = out.resolve()
    if dataset_files(real):
        where = "a dataset"
    elif dataset := next(
        (p.parent for p in (real, *real.parents) if p.name == "data" and dataset_files(p.parent)),
        None,
    ):
        where = f"inside the data folder of the dataset {dataset}"
    elif real.parent.parent.name == "datasets" and dataset_files(real.parent):
        where = f"inside the workspace dataset {real.parent}"  # not listed as a checkpoint
    else:
        return
    raise RequestError(
        f"--out {out}: {where}; a checkpoint needs a folder of its own (e.g. "
        "<workspace>/checkpoints/NAME)"
    )


def _check_same_data(out: Path, info: DatasetInfo, classes: list[str]) -> None:
    """Refuse to resume a checkpoint on other training data: its first epochs would be one
    dataset's, its later ones another's, and config.json would name the second alone."""
    trained_on = ckpt.read_config(out).dataset
    fingerprint = info.fingerprint(split="train", classes=classes)
    own = list(trained_on.get("classes") or classes)
    if own != classes and trained_on.get("fingerprint") == info.fingerprint(
        split="train", classes=own
    ):
        return  # the same data, other --classes: the arguments' check names the classes
    if trained_on.get("fingerprint") != fingerprint:
        raise RequestError(
            f"{out} holds a checkpoint trained on other data ({trained_on.get('name')!r} at "
            f"{trained_on.get('root')}, classes {', '.join(trained_on.get('classes', []))}); "
            f"--data {info.root} differs in its training files. Resume with the same --data, "
            "or choose a new --out"
        )


def stored_arguments(stored: dict[str, Any], all_transitions: int) -> dict[str, Any]:
    """A checkpoint's stored training arguments as this version writes them: a key saved
    before it existed at its default, and ``transitions`` None (saved before it was
    resolved: every pair, at most DEFAULT_TRANSITIONS) as ``all_transitions``, the count it
    meant. The study's plan and the resume check read them alike."""
    full = {**json.loads(json.dumps(TrainingArgs().to_dict())), **stored}
    if full.get("transitions") is None:
        full["transitions"] = all_transitions
    return full


def trained_transitions(directory: str | Path, snapshots: int | None) -> int | None:
    """One-step pairs per trajectory a checkpoint was trained on (pairs t → t + 1, t < the
    count). A config saved before the count was resolved left it to the default, which
    depends on the training data's snapshots per trajectory: ``snapshots`` where the caller
    knows them (the checkpoint was trained on the dataset at hand), else None. None for a
    checkpoint whose config records no training (e.g. converted from elsewhere)."""
    stored = ckpt.read_config(directory).training.get("args")
    if not stored:
        return None
    if stored.get("transitions") is not None:
        return int(stored["transitions"])
    return None if snapshots is None else max(default_transitions(snapshots), 1)


def _check_same_arguments(
    out: Path, args: TrainingArgs, all_transitions: int, classes: list[str]
) -> None:
    """Refuse to resume a checkpoint trained with other arguments than those that may change
    between runs (epochs, device, checkpoint_every, keep_epochs). The classes are compared
    as trained (``classes``: no --classes means every training class), so a resume without
    --classes of a run that named them all is not refused for "[...] → []"."""
    config = ckpt.read_config(out)
    previous = stored_arguments(config.training.get("args", {}), all_transitions)
    # [] stood for every class: the ones it resolved to (the config's), not this run's
    previous["classes"] = previous.get("classes") or list(config.classes or classes)
    resumable = ("epochs", "device", "checkpoint_every", "keep_epochs")
    current = json.loads(json.dumps(args.to_dict()))  # tuples -> lists, as stored
    current["classes"] = list(classes)
    changed = sorted(
        k
        for k in set(previous) | set(current)
        if k not in resumable and previous.get(k) != current.get(k)
    )
    if changed:
        detail = ", ".join(f"{k}: {previous.get(k)!r} → {current.get(k)!r}" for k in changed)
        same = f" (--classes {','.join(previous['classes'])})" if "classes" in changed else ""
        raise RequestError(
            f"{out} holds a checkpoint trained with other arguments ({detail}); choose a "
            f"new --out or repeat the same arguments{same} (only --epochs may grow) to resume"
        )


def _resume(
    out: Path,
    args: TrainingArgs,
    train_pairs: TransitionPairs,
    device: torch.device,
    log: Callable[[str], None] | None,
    all_transitions: int,
    classes: list[str],
) -> tuple[nn.Module, torch.optim.Optimizer, list[dict[str, float]]]:
    """Model, optimizer and history of the checkpoint in ``out`` (which must exist), after
    checking that the arguments match and the files are one saved set; ``all_transitions``:
    what a stored ``transitions`` of None meant (``stored_arguments``); ``classes``: the
    training classes as resolved."""
    _check_same_arguments(out, args, all_transitions, classes)
    ckpt.verify(out)
    model, _ = ckpt.load(out, device=device)
    history = ckpt.read_history(out)
    snapshots.prune_after(out, len(history))  # written by a run killed before its save
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    state = ckpt.load_training_state(out)
    if state is not None:
        steps = len(history) * math.ceil(len(train_pairs) / args.batch_size)
        _check_steps(out, state, steps, len(history))
        _restore_optimizer(optimizer, state)
    if log and len(history) >= args.epochs:  # 'resuming after epoch 3 of 2' read as a bug
        trained = plural(len(history), "epoch")
        log(f"{out} is trained for {trained} (--epochs {args.epochs}): nothing to do")
    elif log:
        log(f"resuming {out} after epoch {len(history)} of {args.epochs}")
    return model, optimizer, history


WARNING = "warning: "  # a log line so marked is a warning (the CLI colours it)


def _warn_if_a_step_may_not_fit(
    model: nn.Module,
    pairs: tuple[TransitionPairs, TransitionPairs],
    args: TrainingArgs,
    device: torch.device,
    *,
    resumed: bool,
    log: Callable[[str], None],
) -> None:
    """Say before the first epoch that one optimizer step may not fit, with the --batch-size
    that does: an out-of-memory kill mid-epoch loses the epoch. The rule is a study plan's
    (``training_step_bytes`` plus the pairs held on that device, within four fifths of the
    memory, as ``analyze`` keeps), applied to the memory this run had before it loaded the
    weights, the pairs and (resumed) the optimizer's moments; an upper bound, so a warning,
    not a refusal."""
    from coherence.probe import activation_bytes
    from coherence.resources import UNKNOWN
    from coherence.surrogates.footprint import (
        available_bytes,
        batch_size_that_fits,
        memory_text,
        training_step_bytes,
    )

    available = available_bytes(device)
    if available == UNKNOWN:
        return
    train_pairs, valid_pairs = pairs
    n_params = sum(p.numel() for p in model.parameters())
    itemsize = next(model.parameters()).element_size()
    batch = min(args.batch_size, len(train_pairs))  # no step holds more than the pairs
    per_example = 2 * activation_bytes(model, train_pairs.get(torch.tensor([0]))[0].to(device))
    held = train_pairs.nbytes + valid_pairs.nbytes if device.type == "cpu" else 0
    total = training_step_bytes(n_params, batch, per_example // 2, itemsize) + held
    loaded = n_params * itemsize * (3 if resumed else 1) + held  # weights (+ AdamW moments)
    budget = USABLE_SHARE * (available + loaded)
    if total <= budget:
        return
    fixed = total - batch * per_example
    fits = batch_size_that_fits(fixed, per_example, budget)
    if fits >= 1 and not resumed:  # a resume keeps its batch size
        fix = f"train with --batch-size {fits} (≈ {memory_text(fixed + fits * per_example)})"
    elif device.type == "cpu":
        fix = "train on a machine with more memory or a GPU (--device cuda)"
    else:
        fix = "train on a GPU with more memory"
    log(
        f"{WARNING}one training step of {batch} examples needs ≈ {memory_text(total)} of "
        f"{device.type} memory with the weights, optimizer and pairs, more than the "
        f"{memory_text(int(budget))} it keeps to (four fifths of {memory_text(available)} free "
        f"and {memory_text(loaded)} loaded): it may run out of memory mid-epoch; {fix}"
    )


def _run_config(
    model: nn.Module,
    info: DatasetInfo,
    args: TrainingArgs,
    classes: list[str],
    pairs: tuple[TransitionPairs, TransitionPairs],
    dataset_root: str | None,
) -> ckpt.CheckpointConfig:
    """config.json of this run: the model, the dataset it learns and the training arguments."""
    train_pairs, valid_pairs = pairs
    return ckpt.new_config(
        model,
        family=info.family.value,
        channels=info.channels,
        resolution=(info.height, info.width),
        dataset={
            "name": info.name,
            "root": dataset_root if dataset_root is not None else str(info.root),
            "classes": classes,
            "fingerprint": info.fingerprint(split="train", classes=classes),
            "physics": info.physics("train", classes),  # Δt and γ / ν it steps with
        },
        seed=args.seed,
        training={
            "args": args.to_dict(),
            "train_pairs": len(train_pairs),
            "valid_pairs": len(valid_pairs),
        },
    )


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    pairs: TransitionPairs,
    args: TrainingArgs,
    epoch: int,
    device: torch.device,
    progress: Progress | None,
) -> float:
    """One pass over the training pairs in the epoch's seeded order; the mean train SMSE."""
    model.train()
    order = torch.randperm(
        len(pairs), generator=torch.Generator().manual_seed(args.seed * 100003 + epoch)
    )
    running, seen = 0.0, 0
    for begin in range(0, len(order), args.batch_size):
        index = order[begin : begin + args.batch_size]
        x, y = (t.to(device) for t in pairs.get(index))
        loss = smse(model(x), y)
        if not torch.isfinite(loss):  # diverged: the epoch is refused (_refuse_divergence)
            return float(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.item() * x.shape[0]
        seen += x.shape[0]
        if progress:
            progress(epoch, args.epochs, seen / len(order), running / seen)
    model.eval()
    return running / seen


def _save_epoch(
    out: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: ckpt.CheckpointConfig,
    history: list[dict[str, float]],
    args: TrainingArgs,
    keep: set[int],
) -> None:
    """Snapshot the epoch just trained when it is kept, then checkpoint when one is due."""
    epoch = len(history)
    if epoch in keep:  # before the save: a resume never lacks a snapshot it passed
        ckpt.save_snapshot(out, model, config, history)
    if epoch % args.checkpoint_every == 0 or epoch == args.epochs:
        ckpt.save_checkpoint(out, model, config, history, _optimizer_tensors(optimizer))


def train(
    data: str | Path,
    out: str | Path,
    args: TrainingArgs,
    *,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    dataset_root: str | None = None,
) -> Path:
    """Train (or resume) and write the checkpoint directory ``out``; returns it.

    ``dataset_root``: the dataset path recorded in config.json when ``data`` is a copy (a
    cluster worker trains on the files shipped to it), so the checkpoint is the same bytes
    as one trained on the original."""
    check_checkpoint_folder(Path(out))  # before the lock file beside it is made
    with training_lock(Path(out)):
        return _train(data, Path(out), args, progress=progress, log=log, dataset_root=dataset_root)


@contextlib.contextmanager
def training_lock(out: Path) -> Iterator[None]:
    """Hold ``.<name>.train.lock`` beside the checkpoint while training into it. Why: two
    runs into one --out both finished, the checkpoint from one and the snapshots (kept when
    present) from the other. A killed run's lock goes with it (flock; its empty file stays). A
    run refused before it wrote anything deletes the file. A Ray driver holds it
    for its runs as a local run does (``executors.ray_cluster``)."""
    from coherence.cache.locks import try_lock_beside

    # No expanduser: training writes to `out` as given, so does the lock.
    above = next((p for p in Path(out).parents if p.exists()), None)
    if above is not None and not above.is_dir():  # "File exists: …/a_file/.ck.train.lock"
        raise RequestError(f"--out {out}: {above} is a file, not a folder; choose another --out")
    try:
        lock, acquired = try_lock_beside(Path(out), lambda at: at.parent / f".{at.name}.train.lock")
    except OSError as error:  # "No such file …: /proc/.xx.train.lock" named our lock file
        error.filename = str(out)
        raise
    if not acquired:
        raise RequestError(
            f"{out}: another `coherence train` or study is training into this checkpoint (it "
            f"holds {lock.path}); wait for it to finish, or choose another --out"
        )
    try:
        yield
    finally:  # deleted only where no checkpoint came of it: beside one, another user's
        lock.release(remove=not Path(out).exists())  # writer may share the file


def _check_what_the_model_assumes(
    info: DatasetInfo, args: TrainingArgs, log: Callable[[str], None] | None
) -> None:
    """Before any pair is read: refuse data the surrogates cannot learn as such (uneven Δt,
    walls), or a ViT on a rectangular grid (its positional embedding is L × L; it failed at
    the first batch, telling the user to run the command that failed); say that open
    boundaries are learned as periodic ones."""
    if problems := info.assumption_problems:
        raise RequestError("; ".join(problems))
    spec = ARCHITECTURES.get(args.arch)
    if spec is not None and spec.uses_resolution and info.height != info.width:
        raise RequestError(
            f"{info.root}: a {info.height}×{info.width} grid (height × width); --arch "
            f"{args.arch} needs a square grid: train a UNet (`--arch unet`) on these data, or "
            "resample them to a square grid"
        )
    if log and info.open_boundaries:
        log(
            f"{WARNING}{info.root} has open boundaries; the surrogates are periodic, so "
            "they learn these data with the wrong boundary"
        )


def _train(
    data: str | Path,
    out: Path,
    args: TrainingArgs,
    *,
    progress: Progress | None,
    log: Callable[[str], None] | None,
    dataset_root: str | None,
) -> Path:
    torch.use_deterministic_algorithms(True, warn_only=True)
    ckpt.recover(out)  # a save killed after its commit is completed, one killed before undone
    info = open_dataset(data)
    _check_what_the_model_assumes(info, args, log)
    every = [c for c in info.classes if c in info.files.get("train", {})]
    classes = list(args.classes) or _trained_order(out, every) or every
    if not classes:  # no train files: said as a missing valid split is (it was a traceback)
        info.file("train", "")
    for split in ("train", "valid"):
        for class_name in classes:
            info.file(split, class_name)  # raises with the available classes
    args = resolve_transitions(args, info, log)
    device = resolve_device(args.device)
    train_pairs = TransitionPairs(info, "train", classes, args.transitions)
    valid_pairs = TransitionPairs(info, "valid", classes, args.transitions)
    if log and train_pairs.streamed:
        log(f"{len(train_pairs)} training pairs exceed the memory budget: read batch by batch")

    model, optimizer = _new_model(info, args, train_pairs, device)
    history: list[dict[str, float]] = []
    if (out / ckpt.CONFIG_FILE).is_file():
        _check_same_data(out, info, classes)
        every = default_transitions(len(info.times))  # what a stored None meant here
        model, optimizer, history = _resume(out, args, train_pairs, device, log, every, classes)
    if log and len(history) < args.epochs:
        both = (train_pairs, valid_pairs)
        _warn_if_a_step_may_not_fit(model, both, args, device, resumed=bool(history), log=log)
    config = _run_config(model, info, args, classes, (train_pairs, valid_pairs), dataset_root)
    validate = validation(valid_pairs, device)
    if not history:
        snapshots.prune_after(out, 0)  # a fresh run in a directory a killed run began
    keep = set(snapshots.resolve_keep(args.keep_epochs, args.epochs))
    if 0 < len(history) < args.epochs and len(history) in keep:  # the weights at hand are
        ckpt.save_snapshot(out, model, config, history)  # that epoch's (a no-op if kept)
    for epoch in range(len(history), args.epochs):
        start = time.perf_counter()
        train_smse = _train_epoch(model, optimizer, train_pairs, args, epoch, device, progress)
        record = {
            "epoch": epoch + 1,
            "train_smse": train_smse,
            "valid_smse": validate(model),
            "seconds": time.perf_counter() - start,
        }
        _refuse_divergence(out, record, args)
        history.append(record)
        if log:
            log(
                f"epoch {epoch + 1}/{args.epochs}: train SMSE {record['train_smse']:.4g}, "
                f"valid SMSE {record['valid_smse']:.4g}"
            )
        _save_epoch(out, model, optimizer, config, history, args, keep)
    return out


def _trained_order(out: Path, every: list[str]) -> list[str]:
    """The checkpoint in ``out``'s classes in its own order when they are ``every`` training
    class (what no --classes means), else []: a resume without --classes of a checkpoint
    trained on all of them in another order (the demo's CE-RP, CE-CRP, CE-RPUI; the default
    is sorted) was refused as "trained with other arguments". A subset stays refused."""
    if not (out / ckpt.CONFIG_FILE).is_file():
        return []
    try:
        own = [str(c) for c in ckpt.read_config(out).dataset.get("classes") or []]
    except CheckpointError:  # the resume names what is wrong with it
        return []
    return own if sorted(own) == sorted(every) else []


def _refuse_divergence(out: Path, record: dict[str, float], args: TrainingArgs) -> None:
    """Stop at an epoch whose loss is NaN or infinite (a learning rate too large), before
    it is saved: it was written as a finished checkpoint (history.json with a bare NaN,
    which is not JSON) that every analysis then refused."""
    bad = [k for k in ("train_smse", "valid_smse") if not math.isfinite(record[k])]
    if not bad:
        return
    saved = len(ckpt.read_history(out)) if (out / ckpt.CONFIG_FILE).is_file() else 0
    if saved:  # its saved epochs fix its arguments: another --lr is another checkpoint
        kept, where = f"{out} keeps epoch {saved}", "into a new --out"
    else:
        kept, where = f"nothing was saved to {out}", "(the same --out will do)"
    names = " and ".join(k.replace("_", " ") for k in bad)
    raise RequestError(
        f"epoch {record['epoch']}: the {names} {'are' if len(bad) > 1 else 'is'} "
        f"{record[bad[0]]} (training diverged); {kept}. Train again with a smaller --lr "
        f"(this run: {args.lr:g}) {where}"
    )
