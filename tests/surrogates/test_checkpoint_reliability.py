"""Issue 13: atomic checkpoint sets, typed config/history fields, memory refused before
allocation, symbolic links refused, default transitions that fit the dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import coherence.surrogates
from coherence.cli import app
from coherence.errors import CheckpointError
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates import fileset
from coherence.surrogates.footprint import Footprint, available_bytes, check_fits, model_footprint
from coherence.surrogates.registry import ARCHITECTURES, build_model, model_config_dict
from coherence.surrogates.training import train
from tests.fixtures import tiny_args


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reliable") / "unet"
    train(tiny_dataset, out, tiny_args())
    return out


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------- atomic saves -----


class Killed(BaseException):
    """Stands for kill -9 at a point of a save (raised from the test-only delay hook)."""


@pytest.mark.parametrize("crash_at", range(10))
def test_a_save_killed_anywhere_leaves_one_whole_set(trained, tmp_path, monkeypatch, crash_at):
    """A save makes 9 hook calls (4 files staged, the commit rename, 4 files moved): a kill
    at any of them leaves readers the old set or the new one, whole, and a resume's
    ``recover`` finishes or drops it."""
    directory = copy_checkpoint(trained, tmp_path / "ckpt")
    model, config = ckpt.load(directory)
    history = ckpt.read_history(directory)
    state = ckpt.load_training_state(directory)
    old = (directory / ckpt.WEIGHTS_FILE).read_bytes()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    new_history = [*history, {**history[-1], "epoch": len(history) + 1}]

    calls = []

    def hook() -> None:
        calls.append(1)
        if len(calls) - 1 == crash_at:
            raise Killed

    monkeypatch.setattr(fileset, "_test_delay", hook)
    with monkeypatch.context() as m:  # a killed process cleans nothing up
        m.setattr(fileset.shutil, "rmtree", lambda *a, **k: None)
        try:
            ckpt.save_checkpoint(directory, model, config, new_history, state)
            finished = True
        except Killed:
            finished = False
    assert finished == (crash_at >= 9)
    committed = crash_at >= 4  # the 5th hook call follows the commit rename

    def seen() -> tuple[int, bytes]:
        return len(ckpt.read_history(directory)), fileset.read_bytes(directory, "model.safetensors")

    epochs, weights = seen()
    assert epochs == len(history) + committed
    assert (weights == old) == (not committed)
    assert ckpt.load(directory)[1] == config
    ckpt.recover(directory)
    assert seen() == (epochs, weights)
    assert not list(directory.glob(".*"))
    ckpt.verify(directory)


def test_a_save_without_training_state_removes_the_old_one(trained, tmp_path):
    directory = copy_checkpoint(trained, tmp_path / "ckpt")
    model, config = ckpt.load(directory)
    history = ckpt.read_history(directory)
    ckpt.save_checkpoint(directory, model, config, history)  # no training state this time
    assert not (directory / ckpt.STATE_FILE).exists()
    ckpt.verify(directory)


def test_resume_refuses_a_set_not_saved_together(trained, tiny_dataset, tmp_path):
    # with a manifest: history.json edited after the save
    edited = copy_checkpoint(trained, tmp_path / "edited")
    history = json.loads((edited / ckpt.HISTORY_FILE).read_text())
    (edited / ckpt.HISTORY_FILE).write_text(json.dumps(history[:1]))
    with pytest.raises(CheckpointError, match="not the set that was saved together"):
        train(tiny_dataset, edited, tiny_args(epochs=3))
    # without one (written by an older version, killed between its files): the optimizer
    # took two epochs of steps, the history records one
    legacy = copy_checkpoint(trained, tmp_path / "legacy")
    (legacy / ckpt.MANIFEST_FILE).unlink()
    (legacy / ckpt.HISTORY_FILE).write_text(json.dumps(history[:1]))
    with pytest.raises(CheckpointError, match=r"taken 8 steps .* records 1 epochs \(4 steps\)"):
        train(tiny_dataset, legacy, tiny_args(epochs=3))


def test_resume_refuses_a_damaged_manifest(trained, tiny_dataset, tmp_path):
    damaged = copy_checkpoint(trained, tmp_path / "damaged")
    (damaged / ckpt.MANIFEST_FILE).write_text("{oops")
    with pytest.raises(CheckpointError, match=r"manifest\.json: not valid JSON"):
        train(tiny_dataset, damaged, tiny_args(epochs=3))
    (damaged / fileset.COMMIT_DIR).mkdir()  # and an interrupted commit cannot be completed
    with pytest.raises(CheckpointError, match="cannot be completed"):
        train(tiny_dataset, damaged, tiny_args(epochs=3))


def test_a_directory_without_manifest_still_loads_and_resumes(trained, tiny_dataset, tmp_path):
    legacy = copy_checkpoint(trained, tmp_path / "legacy")
    (legacy / ckpt.MANIFEST_FILE).unlink()
    model, _ = ckpt.load(legacy)
    reference, _ = ckpt.load(trained)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    ckpt.verify(legacy)  # nothing recorded: nothing to refuse
    train(tiny_dataset, legacy, tiny_args(epochs=3))
    assert json.loads((legacy / ckpt.MANIFEST_FILE).read_text())["epochs"] == 3


def test_surrogates_load_is_the_checkpoint_loader(trained):
    model, config = coherence.surrogates.load(trained)
    assert config == ckpt.read_config(trained) and not model.training


# ------------------------------------------------------------ typed JSON fields -----


def _set(data: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        (("model",), "unet", "field 'model' is the string 'unet'; expected a JSON object"),
        (("model", "arch"), 3, "field 'model.arch' is the number 3; expected a string"),
        (("model", "config"), [1], "field 'model.config' is a list of 1 item; expected a"),
        (("model", "preset"), 2, "field 'model.preset' is the number 2; expected a string or"),
        (("channels",), "density", "field 'channels' is the string 'density'; expected a list"),
        (("resolution",), [16], "'resolution' is a list of 1 item; expected a list of 2 int"),
        (("resolution",), [16, 0], "'resolution[1]' is the number 0; expected an integer ≥ 1"),
        (("resolution",), [-16, 16], "'resolution[0]' is the number -16; expected an integer"),
        (("resolution",), [16, "16"], "'resolution[1]' is the string '16'; expected an integ"),
        (("seed",), "3", "field 'seed' is the string '3'; expected an integer"),
        (("seed",), True, "field 'seed' is the boolean true; expected an integer"),
        (("family",), None, "field 'family' is null; expected a string"),
        (("dataset",), ["x"], "field 'dataset' is a list of 1 item; expected a JSON object"),
        (("dataset", "classes"), "CE-RP", "field 'dataset.classes' is the string 'CE-RP'"),
        (("training",), "x", "field 'training' is the string 'x'; expected a JSON object"),
        (("training", "args"), 1, "field 'training.args' is the number 1"),
        # the physics check against the data and the recipe a resume compares were skipped
        (("dataset", "physics"), "x", "field 'dataset.physics' is the string 'x'; expected a"),
        (("dataset", "physics", "dt"), "0.1", "'dataset.physics.dt' is the string '0.1'; exp"),
        (("training", "args", "epochs"), "two", "'training.args.epochs' is the string 'two'"),
        (("training", "args", "lr"), [1], "field 'training.args.lr' is a list of 1 item; exp"),
        (("versions", "torch"), 2, "field 'versions.torch' is the number 2; expected a string"),
        (("dataset", "fingerprint"), 5, "field 'dataset.fingerprint' is the number 5"),
        (("training", "args", "checkpoint_every"), 0, "'training.args.checkpoint_every' is the n"),
        (("training", "args", "batch_size"), 0, "'training.args.batch_size' is the number 0"),
        (("training", "args", "transitions"), "4", "'training.args.transitions' is the string"),
        (("training", "args", "classes"), "CE-RP", "'training.args.classes' is the string 'CE"),
        (("dataset", "physics", "dt"), True, "'dataset.physics.dt' is the boolean true"),
        (("channels",), ["density", 1], "'channels' is a list of 2 items; expected a list of s"),
        (("model", "config", "base_width"), "8", "UNetConfig.base_width = '8'"),
        # a newer format asks for a newer coherence, not for a re-save only it could make
        (("format_version",), 2, "written by a newer coherence (this one reads 1); upgrade"),
        (("format_version",), 0, "version 0 is not supported (this version reads 1); retrain"),
    ],
)
def test_config_fields_of_the_wrong_type_are_named(trained, tmp_path, path, value, words):
    broken = copy_checkpoint(trained, tmp_path / "broken")
    config = json.loads((broken / ckpt.CONFIG_FILE).read_text())
    _set(config, path, value)
    (broken / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        ckpt.load(broken)
    assert str(info.value).startswith(str(broken / ckpt.CONFIG_FILE))
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("history", "words"),
    [
        ({"epoch": 1}, "the top level is an object; expected a JSON list of per-epoch records"),
        ([5], "field '[0]' is the number 5; expected a JSON object"),
        ([{"epoch": "1"}], "field '[0].epoch' is the string '1'; expected an integer"),
        ([{"epoch": 2, "train_smse": 1, "valid_smse": 1}], "'[0].epoch' is the number 2; exp"),
        ([{"epoch": 1, "train_smse": "x", "valid_smse": 1}], "'[0].train_smse' is the string"),
        ([{"epoch": 1, "train_smse": 1}], "field '[0].valid_smse' is missing"),
        (
            [{"epoch": 1, "train_smse": 1, "valid_smse": 1, "seconds": "x"}],
            "field '[0].seconds' is the string 'x'",
        ),
    ],
)
def test_history_records_of_the_wrong_type_are_named(trained, tmp_path, history, words):
    broken = copy_checkpoint(trained, tmp_path / "broken")
    (broken / ckpt.HISTORY_FILE).write_text(json.dumps(history))
    with pytest.raises(CheckpointError) as info:
        ckpt.read_history(broken)
    assert str(info.value).startswith(str(broken / ckpt.HISTORY_FILE))
    assert words in str(info.value)


def test_cli_reports_a_mistyped_config_in_one_line(trained, tiny_dataset, tmp_path):
    broken = copy_checkpoint(trained, tmp_path / "broken")
    config = json.loads((broken / ckpt.CONFIG_FILE).read_text())
    config["model"] = "unet"
    (broken / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    args = ["train", "--data", str(tiny_dataset), "--out", str(broken), "--seed", "3"]
    result = CliRunner().invoke(app, [*args, "--epochs", "3", "--transitions", "4"])
    assert result.exit_code == 2, result.output
    assert "field 'model' is the string 'unet'" in result.output
    assert "Traceback" not in result.output


# -------------------------------------------------------------------- memory -----

OVERRIDES = {
    "unet": [{"base_width": 8, "channel_mult": (1, 2), "n_down": 1, "groups": 4}],
    "vit": [{"width": 48, "depth": 3, "heads": 6, "mlp_ratio": 1.5, "patch": 2}],
}


@pytest.mark.parametrize(
    ("arch", "preset", "overrides"),
    [(a, p, {}) for a, spec in ARCHITECTURES.items() for p in spec.presets]
    + [(a, "demo", o) for a, items in OVERRIDES.items() for o in items],
)
def test_parameter_count_from_the_config_is_exact(arch, preset, overrides):
    resolution = 32
    model = build_model(arch, preset, channels=3, resolution=resolution, **overrides)
    footprint = model_footprint(model_config_dict(model), 3, (resolution, resolution))
    assert footprint.parameters == sum(p.numel() for p in model.parameters())
    assert footprint.state_bytes == sum(
        t.numel() * t.element_size() for t in model.state_dict().values()
    )


@pytest.mark.parametrize("arch", ["unet", "vit"])
def test_activation_estimate_bounds_what_autograd_keeps(arch):
    """Reference: the distinct storages autograd saves in a real one-example forward."""
    model = build_model(arch, "demo", channels=4, resolution=32)
    estimate = model_footprint(model_config_dict(model), 4, (32, 32)).activation_bytes
    weights = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.randn(1, 4, 32, 32, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    real = sum(kept.values())
    assert real <= estimate <= 2 * real


def test_an_absurd_width_is_refused_before_allocation(trained, tmp_path):
    huge = copy_checkpoint(trained, tmp_path / "huge")
    config = json.loads((huge / ckpt.CONFIG_FILE).read_text())
    config["model"]["config"]["base_width"] = 10**6
    (huge / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        ckpt.load(huge)
    message = str(info.value)
    assert message.startswith(str(huge / ckpt.CONFIG_FILE))
    assert "of CPU memory" in message and "is free" in message and "parameters" in message


def test_check_fits_names_the_estimate_and_the_limit():
    footprint = Footprint(parameters=1000, state_bytes=4000, activation_bytes=2 * 2**20)
    check_fits(footprint, "cpu", "x/config.json", limit=3 * 2**20)
    with pytest.raises(CheckpointError) as info:
        check_fits(footprint, "cpu", "x/config.json", limit=2**20)
    assert str(info.value) == (
        "x/config.json: this model needs about 2.0 MiB of CPU memory (1,000 parameters = "
        "0.0 MiB, held twice while loading, plus 2.0 MiB of activations for one example) "
        "but only 1.0 MiB is free; its sizes in config.json are wrong or the machine is too "
        "small: fix the config or use a larger machine"
    )


def test_available_cpu_memory_is_a_plausible_reading():
    total = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    assert 0 < available_bytes("cpu") <= total


# ------------------------------------------------------------------- symlinks -----


@pytest.mark.parametrize("name", [ckpt.WEIGHTS_FILE, ckpt.CONFIG_FILE, ckpt.HISTORY_FILE])
@pytest.mark.parametrize("outside", [True, False])
def test_symlinked_checkpoint_files_are_refused(trained, tmp_path, name, outside):
    linked = copy_checkpoint(trained, tmp_path / "linked")
    target = tmp_path / f"elsewhere-{name}" if outside else linked / f"copy-{name}"
    (linked / name).rename(target)
    (linked / name).symlink_to(target)
    reader = ckpt.read_history if name == ckpt.HISTORY_FILE else ckpt.load
    with pytest.raises(CheckpointError, match=f"{name}: is a symbolic link .*regular files"):
        reader(linked)


def test_workspace_scan_lists_a_linked_checkpoint_as_a_problem(trained, tmp_path):
    from coherence.dashboard.workspace_scan import scan_workspace

    root = tmp_path / "ws"
    linked = copy_checkpoint(trained, root / "checkpoints" / "linked")
    (linked / ckpt.CONFIG_FILE).rename(tmp_path / "outside.json")
    (linked / ckpt.CONFIG_FILE).symlink_to(tmp_path / "outside.json")
    catalog = scan_workspace(root)
    assert not catalog.checkpoints
    assert any("linked/config.json points outside the workspace" in p for p in catalog.problems)


# ---------------------------------------------------------------- transitions -----


def test_default_transitions_take_what_the_dataset_has(tiny_dataset, tmp_path):
    lines: list[str] = []
    out = train(
        tiny_dataset, tmp_path / "t", tiny_args(transitions=None, epochs=1), log=lines.append
    )
    assert lines[0] == (
        "using 4 transitions per trajectory (all 4 the dataset has; set --transitions to choose)"
    )
    config = ckpt.read_config(out)
    assert config.training["args"]["transitions"] == 4
    assert config.training["train_pairs"] == 2 * 4 * 4  # classes × trajectories × pairs
    # the same command resumes; an explicit request that does not fit is still refused
    train(tiny_dataset, out, tiny_args(transitions=None, epochs=2))
    assert len(ckpt.read_history(out)) == 2
