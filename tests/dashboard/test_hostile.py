"""Hostile input (issue 13): crafted links and planted workspace entries.

Markdown in a URL value or a directory name must be shown, never rendered (an image would be
fetched by every visitor's browser); a link of path traversal, absolute paths, encodings,
huge or non-finite numbers, very long or odd unicode values, or repeated keys gets a warning
and the default selection, and opens no file outside the workspace; a planted checkpoint or a
link that leaves the workspace cannot take over the default view.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

from coherence.cache.jobs import JobRunner
from coherence.dashboard.markup import code, literal
from coherence.dashboard.page import COMPACT_STYLE
from coherence.dashboard.selection import decode_query, default_selection
from coherence.dashboard.workspace_scan import scan_workspace
from coherence.errors import WorkspacePathError
from coherence.surrogates.training import TrainingArgs, train
from coherence.workspace import cache_dir, checkpoints_dir, datasets_dir, secure_tree
from tests import fixtures
from tests.fixtures import TINY_OVERRIDES

from .test_app import assert_clean, open_app, texts
from .test_selection import synthetic_catalog

IMAGE = "![i](https://evil.example/p.png)"
LINK = "[l](https://evil.example/)"
HOSTILE = IMAGE + LINK
# the ten parameters of the issue, plus rtol
URL_KEYS = ("data", "ckpt", "classes", "vs", "resp", "est", "traj", "window", "damping", "device")
MARKDOWN_FIELDS = {"body", "label", "help", "text"}  # what Streamlit renders as markdown
_COMMONMARK = MarkdownIt("commonmark").disable("text_join")  # keep escapes apart
_BARE_LINK = re.compile(r"https?:|www\.", re.IGNORECASE)  # GFM autolink literals


def rendered_constructs(markdown: str) -> list[str]:
    """Links, images and raw HTML a CommonMark parser finds in ``markdown``, plus GFM's bare
    https:// or www. autolinks (Streamlit renders GFM)."""
    found, plain = [], []
    for token in _COMMONMARK.parse(markdown):
        for child in token.children or ():
            if child.type in ("image", "link_open", "html_inline"):
                found.append(f"{child.type} {child.attrs}")
            # an escape or a code span breaks a bare link: only plain text runs can hold one
            plain.append(child.content if child.type == "text" else "\0")
        if token.type == "html_block":
            found.append("html_block")
    found += [f"bare link {m.group()!r}" for m in _BARE_LINK.finditer("".join(plain))]
    return found


def markdown_texts(at: AppTest) -> list[str]:
    """Every string of the page that Streamlit renders as markdown (bodies, labels, help
    tooltips, progress texts, expander labels), main area and sidebar."""
    out: list[str] = []

    def strings(message) -> None:
        for descriptor, value in message.ListFields():
            if descriptor.type == descriptor.TYPE_MESSAGE:
                for item in value if descriptor.is_repeated else [value]:
                    strings(item)
            elif descriptor.name in MARKDOWN_FIELDS and isinstance(value, str):
                out.append(value)

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None and hasattr(proto, "ListFields"):
            strings(proto)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return out


def assert_nothing_rendered(at: AppTest) -> None:
    """No markdown or HTML construct in any text, except the page's own constant style sheet
    (no input reaches it)."""
    shown = [text for text in markdown_texts(at) if text != COMPACT_STYLE]
    bad = {text: rendered_constructs(text) for text in shown}
    bad = {text: found for text, found in bad.items() if found}
    assert not bad, bad


# ----------------------------------------------------------------------- escaping -----


@pytest.mark.parametrize(
    "text",
    [HOSTILE, "<https://evil.example>", "www.evil.example", "`a` **b** # c", "x\n[d]: http://e"],
)
def test_literal_and_code_show_text_and_render_nothing(text):
    for markdown in (literal(text), code(text)):
        assert rendered_constructs(markdown) == []
        html = _COMMONMARK.renderInline(markdown)
        assert "<a" not in html and "<img" not in html and "<em" not in html
    one_line = text.replace("\n", " ")
    # what the visitor reads is the text itself (CommonMark's definition of an escape)
    assert re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", literal(text)) == one_line
    assert f"<code>{one_line.strip()}</code>" in _COMMONMARK.renderInline(code(text)).replace(
        "&quot;", '"'
    ).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def test_markdown_in_every_url_parameter_is_shown_not_rendered(workspace, monkeypatch):
    params = {key: HOSTILE for key in URL_KEYS} | {"rtol": HOSTILE}
    at = open_app(workspace, monkeypatch, params)
    assert not at.exception, texts(at.exception)
    warnings = texts(at.warning)
    for key in (*URL_KEYS, "rtol"):
        assert f"URL parameter {key}=" in warnings, key
    assert IMAGE in warnings  # shown to the visitor as text
    assert_nothing_rendered(at)
    assert "cached result" in texts(at.caption)  # the default view
    expected = default_selection(workspace).to_query()
    assert {k: at.query_params[k] for k in expected} == expected


# ------------------------------------------------------------- planted checkpoints -----

PLANTED = "![p](https:\\\\evil.example\\p.png)"  # a legal directory name that sorts first


def copy_workspace(workspace: Path, tmp_path: Path) -> Path:
    """The session workspace with its cache (keys hash contents, not paths)."""
    return fixtures.copy_workspace(workspace, tmp_path / "ws")


def plant(root: Path, name: str, weights: bytes | None = None, base_width: int = 4) -> Path:
    """A checkpoint whose config is a UNet of another size (its own model group, labelled
    ``UNet (base_width=4)``: before ``base_width=8``); weights copied or given."""
    source = checkpoints_dir(root) / "unet_tiny_s1"
    target = checkpoints_dir(root) / name
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config["model"]["config"]["base_width"] = base_width
    (target / "config.json").write_text(json.dumps(config))
    if weights is not None:
        (target / "model.safetensors").write_bytes(weights)
    return target


def test_a_copy_of_a_checkpoint_is_not_offered_as_another_seed(workspace, tmp_path):
    """`cp -r unet_tiny_s1 unet_tiny_s1_backup` put one model in the group twice; the
    default selection pooled it as two seeds (the analysis now refuses that)."""
    root = copy_workspace(workspace, tmp_path)
    backup = checkpoints_dir(root) / "unet_tiny_s1_backup"
    shutil.copytree(checkpoints_dir(root) / "unet_tiny_s1", backup)
    catalog = scan_workspace(root)
    assert [c.name for c in catalog.checkpoints] == ["unet_tiny_s1", "unet_tiny_s2", "vit_tiny_s1"]
    assert (
        "checkpoint unet_tiny_s1_backup: holds the same weights as unet_tiny_s1 (a copy); "
        "skipped, so that one model is not pooled as two seeds"
    ) in catalog.problems
    selection = default_selection(root)
    assert selection is not None and "unet_tiny_s1_backup" not in selection.checkpoints
    # the copy named (in a link, by the report): a copy of which one, not "not in the
    # workspace", which misled where the copy sorted first and the original was skipped
    from coherence.dashboard.checks import check_group

    entry = catalog.dataset(selection.dataset)
    said = check_group(catalog, entry, ["unet_tiny_s1_backup", "nope"])
    assert said == (
        "checkpoint unet_tiny_s1_backup holds the same weights as unet_tiny_s1, which the "
        "workspace lists in its place (one model is not pooled as two seeds): choose "
        "unet_tiny_s1, or remove the copy; checkpoint(s) nope are not in the workspace"
    )


def test_a_checkpoint_as_the_workspace_is_refused_and_left_alone(workspace, monkeypatch):
    """`streamlit run` with COHERENCE_WORKSPACE naming a checkpoint made a cache/ tree inside
    it (`coherence serve` and the other commands refuse it already)."""
    checkpoint = checkpoints_dir(workspace) / "unet_tiny_s1"
    at = open_app(checkpoint, monkeypatch)
    assert not at.exception
    assert "is a checkpoint, not a workspace" in texts(at.error)
    assert not (checkpoint / "cache").exists()


def test_a_planted_broken_checkpoint_is_skipped_with_a_reason(workspace, tmp_path, monkeypatch):
    root = copy_workspace(workspace, tmp_path)
    plant(root, PLANTED, weights=b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    plant(root, "aaa_mismatched")  # tiny UNet weights under a config of another width
    catalog = scan_workspace(root)
    assert [c.name for c in catalog.checkpoints] == ["unet_tiny_s1", "unet_tiny_s2", "vit_tiny_s1"]
    problems = "\n".join(catalog.problems)
    assert f"checkpoint {PLANTED}: model.safetensors is not a readable safetensors" in problems
    assert "checkpoint aaa_mismatched: model.safetensors does not match the architecture" in (
        problems
    )
    assert default_selection(root) == default_selection(workspace)
    at = open_app(root, monkeypatch)
    assert_clean(at)
    assert "cached result" in texts(at.caption) and "not computed yet" not in texts(at.info)
    assert PLANTED in texts(at.markdown)  # named in "workspace entries skipped", as text
    assert_nothing_rendered(at)


@pytest.mark.slow  # trains a tiny model (≈ 10 s on 2 busy cores) and runs the app twice
def test_an_uncached_group_that_sorts_first_does_not_take_over_the_first_page(
    workspace, tmp_path, monkeypatch
):
    root = copy_workspace(workspace, tmp_path)
    args = TrainingArgs(
        arch="unet",
        seed=7,
        overrides={**TINY_OVERRIDES, "base_width": 4},
        epochs=1,
        batch_size=8,
        transitions=2,
        device="cpu",
    )
    train(datasets_dir(root) / "tiny_ce", checkpoints_dir(root) / "aaa_unet_narrow", args)
    catalog = scan_workspace(root)
    first = catalog.groups("tiny_ce")[0]
    assert first.checkpoints == ("aaa_unet_narrow",), "the planted group must sort first"
    assert first.label == "UNet (base_width=4)"
    assert default_selection(root).checkpoints == ("aaa_unet_narrow",)  # by order alone
    expected = default_selection(workspace)
    at = open_app(root, monkeypatch)
    assert_clean(at)
    assert "cached result" in texts(at.caption) and "not computed yet" not in texts(at.info)
    assert at.query_params["ckpt"] == ",".join(expected.checkpoints)
    at = open_app(root, monkeypatch, {"data": "tiny_ce"})  # naming the dataset: the same
    assert at.query_params["ckpt"] == ",".join(expected.checkpoints)


# -------------------------------------------------------------------- hostile links -----


def outside_copies(workspace: Path, tmp_path: Path) -> dict[str, Path]:
    """A real dataset and checkpoint outside the workspace: a link that could reach them
    would be accepted, so refusing them is the workspace boundary at work."""
    outside = tmp_path / "outside"
    shutil.copytree(datasets_dir(workspace) / "tiny_ce", outside / "tiny_ce")
    shutil.copytree(checkpoints_dir(workspace) / "unet_tiny_s1", outside / "unet_tiny_s1")
    return {"data": outside / "tiny_ce", "ckpt": outside / "unet_tiny_s1"}


def traversals(target: Path, root: Path) -> list[str]:
    relative = os.path.relpath(target, root / "datasets")
    return [
        relative,  # ../../outside/tiny_ce
        str(target),  # absolute
        relative.replace("/", "%2F").replace(".", "%2e"),  # still encoded after one decode
        relative.replace("/", "\\"),
        f"tiny_ce/../{relative}",
        "tiny_ce/../../checkpoints/unet_tiny_s1",
        "/etc/passwd",
        "~/.ssh/id_rsa",
        "tiny_ce\x00/../../etc",
        "file:///etc/passwd",
    ]


HOSTILE_VALUES = {
    "traj": ["-1", "0-" + "9" * 30, "1e999", "nan", "0,-0", "٣", "0" * 10_000 + "1"],
    "window": ["-1:3", "0:-5", "0:" + "9" * 40, "nan:inf", "0:1e3", "١:٢", ":" * 5000],
    "damping": ["-1", "0", "-0.0", "nan", "inf", "-inf", "1e309", "0x10", "1" * 5000, "１"],
    "rtol": ["1", "0", "nan", "-1e-3", "inf"],
    "est": ["", "CG", "cg ", "subspace\x00", "ｃｇ", "x" * 100_000],
    "device": ["CUDA", "cuda:0", "mps", "cpu\n", "🚀"],
    "resp": ["", ",", "SMSE", "smse,smse2", "🚀" * 1000],
    "classes": ["", ",,,", "CE-RP,CE-RP", "ce-rp,ce-crp", "CE‐RP,CE‐CRP", "\u202eCE-RP,CE-CRP"],
}


def test_hostile_links_warn_and_fall_back_without_opening_outside_files(workspace, tmp_path):
    """Selection level, every value at once per key: a warning naming the key, the default
    in its place, never an exception, and no file outside the workspace opened while the
    link is decoded, turned into requests and keyed (Python's audit hook sees every open)."""
    targets = outside_copies(workspace, tmp_path)
    catalog = scan_workspace(workspace)
    default = default_selection(catalog)
    cases = [(key, value) for key, values in HOSTILE_VALUES.items() for value in values]
    for key, target in (("data", targets["data"]), ("ckpt", targets["ckpt"])):
        cases += [
            (k, v)
            for k in ((key, "vs") if key == "ckpt" else (key,))
            for v in traversals(target, workspace)
        ]
    request_key = JobRunner(workspace).key
    opened: list[str] = []
    watching = [True]

    def audit(event: str, args: tuple) -> None:
        if watching[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(audit)
    try:
        for key, value in cases:
            selection, warnings = decode_query({key: value}, catalog)
            if key == "classes" and value == "CE-RP,CE-RP":  # one class named twice
                assert selection.classes == ("CE-RP",) or warnings, value
                continue
            assert len(warnings) == 1 and warnings[0].startswith(f"URL parameter {key}="), (
                key,
                value,
                warnings,
            )
            assert len(warnings[0]) < 400
            assert selection.dataset == default.dataset
            assert selection.checkpoints == default.checkpoints and selection.compare == ()
            for request in selection.to_requests(workspace):
                request_key(request)  # opens the files the request names
    finally:
        watching[0] = False
    outside = [p for p in opened if str(tmp_path / "outside") in p or p.startswith("/etc")]
    assert outside == []


def test_repeated_keys_take_the_last_value():
    catalog = synthetic_catalog()
    selection, warnings = decode_query({"est": ["newton", "cg"], "traj": ["9", "1"]}, catalog)
    assert warnings == [] and selection.estimator == "cg" and selection.trajectories == (1,)
    selection, warnings = decode_query({"data": ["ce_demo", "../etc"]}, catalog)
    assert len(warnings) == 1 and "data='../etc'" in warnings[0]


@pytest.mark.parametrize(
    "params",
    [
        {"data": "../../etc/passwd", "ckpt": "/etc", "vs": "..%2F..%2Fetc"},
        {"traj": "-1", "window": "0:" + "9" * 40, "damping": "nan", "rtol": "inf"},
        {"classes": "\u202e" + "x" * 20_000, "resp": "🚀", "est": "ｃｇ", "device": "cuda:0"},
    ],
    ids=["paths", "numbers", "text"],
)
def test_hostile_links_in_the_app(workspace, monkeypatch, params):
    at = open_app(workspace, monkeypatch, params)
    assert not at.exception, texts(at.exception)
    warnings = texts(at.warning)
    for key in params:
        assert f"URL parameter {key}=" in warnings, key
    assert "cached result" in texts(at.caption)
    assert_nothing_rendered(at)
    expected = default_selection(workspace).to_query()
    assert {k: at.query_params[k] for k in expected} == expected


# ----------------------------------------------------------------- workspace links -----


def test_a_malformed_dataset_file_is_skipped_and_the_others_listed(workspace, tmp_path):
    """One file with @n_trajectories = 'three' anywhere under datasets/ raised ValueError out
    of the scan: the dashboard and `study` of another dataset failed with it."""
    import h5py

    root = copy_workspace(workspace, tmp_path)
    bad = datasets_dir(root) / "aaa_bad"
    shutil.copytree(datasets_dir(root) / "tiny_ce", bad)
    hdf5 = next((bad / "data" / "test").glob("*.hdf5"))
    with h5py.File(hdf5, "a") as f:
        f.attrs["n_trajectories"] = "three"
    catalog = scan_workspace(root)
    assert [d.name for d in catalog.datasets] == ["tiny_ce", "tiny_ns"]
    assert "dataset aaa_bad: " in "\n".join(catalog.problems)
    assert "@n_trajectories is 'three'" in "\n".join(catalog.problems)


def test_links_out_of_the_workspace_are_skipped_with_a_reason(workspace, tmp_path):
    root = copy_workspace(workspace, tmp_path)
    targets = outside_copies(workspace, tmp_path)
    os.symlink(targets["ckpt"], checkpoints_dir(root) / "aaa_escape")
    weights = checkpoints_dir(root) / "unet_tiny_s2" / "model.safetensors"
    weights.unlink()
    os.symlink(targets["ckpt"] / "model.safetensors", weights)  # a file inside links out
    hdf5 = next((datasets_dir(root) / "tiny_ns" / "data" / "test").glob("*.hdf5"))
    hdf5.unlink()
    os.symlink(targets["data"] / "data" / "test" / hdf5.name, hdf5)
    catalog = scan_workspace(root)
    assert [c.name for c in catalog.checkpoints] == ["unet_tiny_s1", "vit_tiny_s1"]
    assert [d.name for d in catalog.datasets] == ["tiny_ce"]
    problems = "\n".join(catalog.problems)
    assert "checkpoints/aaa_escape: points outside the workspace; skipped" in problems
    assert (
        "checkpoint unet_tiny_s2: checkpoints/unet_tiny_s2/model.safetensors points outside "
        "the workspace" in problems
    )
    assert "dataset tiny_ns: datasets/tiny_ns/data/test/" in problems


# ------------------------------------------------------------------ cache permissions -----


def test_a_cache_others_can_write_is_fixed(workspace, tmp_path, monkeypatch):
    root = copy_workspace(workspace, tmp_path)
    cache = cache_dir(root)
    files = [p for p in cache.rglob("*") if p.is_file()]
    for path in (cache, *files):
        path.chmod(0o777 if path.is_dir() else 0o666)
    notes = secure_tree(cache)
    assert len(notes) == 1 + len(files)
    for path in (cache, *cache.rglob("*")):
        assert stat.S_IMODE(path.lstat().st_mode) & 0o022 == 0, path
    assert secure_tree(cache) == []  # nothing left to fix
    at = open_app(root, monkeypatch)  # and the cached default still shows
    assert_clean(at)
    assert "cached result" in texts(at.caption)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_cache_entry_of_another_user_is_refused(workspace, tmp_path, monkeypatch):
    root = copy_workspace(workspace, tmp_path)
    planted = next(p for p in cache_dir(root).rglob("*") if p.is_file())
    os.chown(planted, 65534, 65534)
    with pytest.raises(WorkspacePathError, match="owned by user id 65534"):
        secure_tree(cache_dir(root))
    at = open_app(root, monkeypatch)
    assert not at.exception
    assert "owned by user id 65534, not by this user" in texts(at.error)
    assert not at.get("plotly_chart")


def test_a_class_of_other_constants_is_refused_before_compute(workspace, tmp_path, monkeypatch):
    """A class of γ = 1.6 added beside the trained 1.4 was listed, offered for Compute and
    analysed (a hostile-workspace campaign): the page now says why it cannot be computed."""
    from dataclasses import replace

    from coherence.dashboard.checks import problems
    from tests.analysis.test_pipeline import add_class_of_gamma

    root = copy_workspace(workspace, tmp_path)
    add_class_of_gamma(datasets_dir(root) / "tiny_ce", "CE-G16", 1.6)
    catalog = scan_workspace(root)
    selection = default_selection(catalog)
    assert not problems(selection, catalog)
    chosen = replace(selection, classes=(*selection.classes, "CE-G16"))
    (problem,) = problems(chosen, catalog)
    assert "never trained on the physical constants of class CE-G16, which has gamma 1.6" in (
        problem
    )
    at = open_app(root, monkeypatch, chosen.to_query())
    assert not at.exception
    assert "class CE-G16, which has gamma 1.6" in texts(at.error) + texts(at.warning) + texts(
        at.info
    )


def test_a_checkpoint_deleted_under_an_open_page_is_said_not_dropped_in_silence(
    workspace, tmp_path, monkeypatch
):
    """The seed dropped out of the selection and the headline changed to other scores with
    no word (a hostile-workspace campaign); a fresh link load said it, an open page not."""
    root = copy_workspace(workspace, tmp_path)
    at = open_app(root, monkeypatch)
    assert_clean(at)
    chosen = at.multiselect(key="sb_ckpts").value
    assert len(chosen) > 1
    shutil.move(checkpoints_dir(root) / chosen[-1], tmp_path / "moved_away")
    at.run()
    assert not at.exception
    assert f"Checkpoint(s) {chosen[-1]} left the workspace" in texts(at.warning)
    assert at.multiselect(key="sb_ckpts").value == chosen[:-1]
    at.run()  # said once, not on every rerun
    assert "left the workspace" not in texts(at.warning)


def dataset_files_below(folder: Path) -> list[Path]:
    """Every dataset's first file below ``folder`` (one per dataset)."""
    from coherence.simulation.dataset import dataset_files

    return [files[0] for d in sorted(folder.iterdir()) if (files := dataset_files(d))]


def test_a_page_with_no_readable_dataset_leads_with_the_damaged_files(
    workspace, tmp_path, monkeypatch
):
    """A truncated HDF5 file made its dataset skipped, and the page said "The workspace has
    no datasets" and advised building a new demo; the cause was folded in an expander."""
    root = copy_workspace(workspace, tmp_path)
    for victim in dataset_files_below(datasets_dir(root)):
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    at = open_app(root, monkeypatch)
    assert not at.exception
    headline = texts(at.error)
    assert "No dataset can be read" in headline
    assert "not a readable HDF5 file" in headline
    assert "has no datasets" not in texts(at.info)


def test_one_damaged_history_leaves_the_other_seeds_rows(workspace, tmp_path, monkeypatch):
    """A garbage history.json replaced the Overview's whole Models table, every seed's row
    with it (a hostile-workspace campaign): it is said for its seed, and the rows stay."""
    root = copy_workspace(workspace, tmp_path)
    at = open_app(root, monkeypatch, {"panel": "Overview"})
    chosen = at.multiselect(key="sb_ckpts").value
    (checkpoints_dir(root) / chosen[0] / "history.json").write_text('{"garbage": true}')
    at = open_app(root, monkeypatch, {"panel": "Overview"})
    assert not at.exception and not at.error
    assert f"{chosen[0]}: no training history shown" in texts(at.warning)
    (table,) = [t for t in at.dataframe if "checkpoint" in t.value.columns]
    assert set(chosen) <= set(table.value["checkpoint"])


def test_a_retrained_checkpoint_is_why_its_selection_reads_not_computed(
    workspace, tmp_path, monkeypatch
):
    """After a seed's weights changed under a cached view, the page said only "not computed
    yet for this selection" (a hostile-workspace campaign): it now says a result of the
    selection is cached for other contents."""
    from safetensors.torch import load_file, save_file

    root = copy_workspace(workspace, tmp_path)
    at = open_app(root, monkeypatch)
    assert "not computed yet" not in texts(at.info)
    weights = checkpoints_dir(root) / at.multiselect(key="sb_ckpts").value[0] / "model.safetensors"
    save_file({k: 1.5 * v for k, v in load_file(weights).items()}, weights)
    link = {key: at.query_params[key] for key in at.query_params}  # the same view again
    at = open_app(root, monkeypatch, link)
    assert not at.exception
    said = texts(at.info)
    assert "not computed yet" in said
    assert "cached for other contents: a checkpoint or the dataset changed since" in said
