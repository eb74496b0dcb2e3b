"""The analysis pipeline on real tiny datasets and trained checkpoints: batches, result
tensors against direct influence calls, result files, `coherence analyze`, and refusals."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coherence.analysis.batch import assemble_batch
from coherence.analysis.influence import compute_influence, influence_matrix
from coherence.analysis.pipeline import (
    JVP_PASSES,
    PRIMAL_PASSES,
    VJP_PASSES,
    check_request,
    estimate_cost,
    krylov_products,
    prepare,
    run_analysis,
)
from coherence.analysis.request import AnalysisRequest, parse_window
from coherence.analysis.results import load_result, save_result
from coherence.analysis.standardization import standardize
from coherence.cli import app
from coherence.errors import CheckpointError, RequestError
from coherence.simulation.dataset import SPLITS, open_dataset
from coherence.simulation.wellformat import write_well_file
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates.training import TrainingArgs, train
from tests.fixtures import TINY_OVERRIDES, advected_states


def write_dataset(root, classes=("CE-RP", "CE-CRP"), family="euler", t_end=0.2):
    times = np.linspace(0, t_end, 5)
    for c, name in enumerate(classes):
        for s, (split, n) in enumerate(zip(SPLITS, (3, 1, 2), strict=True)):
            states = advected_states(n, 5, 16, seed=10 * c + s)
            if family == "ns":
                states = states[:, :, 1:3] / states[:, :, :1]  # velocities
            write_well_file(
                root / "data" / split / f"{name}.hdf5",
                states,
                times,
                family=family,
                class_name=name,
                dataset_name=f"tiny_{family}",
            )
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis_ws")
    data = write_dataset(root / "ce")
    ckpts = []
    for seed in (1, 2):
        out = root / f"unet_s{seed}"
        args = TrainingArgs(
            seed=seed, epochs=1, batch_size=8, transitions=4, device="cpu", overrides=TINY_OVERRIDES
        )
        train(data, out, args)
        ckpts.append(out)
    ns_data = write_dataset(root / "ns", classes=("NS-Sines", "NS-Gauss"), family="ns")
    ns_ckpt = root / "ns_unet"
    train(
        ns_data,
        ns_ckpt,
        TrainingArgs(
            seed=1, epochs=1, batch_size=8, transitions=4, device="cpu", overrides=TINY_OVERRIDES
        ),
    )
    return {"data": data, "ckpts": ckpts, "ns_data": ns_data, "ns_ckpt": ns_ckpt}


def request_for(ws, **changes) -> AnalysisRequest:
    base = dict(
        checkpoints=tuple(str(c) for c in ws["ckpts"]),
        data=str(ws["data"]),
        classes=("CE-RP", "CE-CRP"),
        t_start=1,
        n_steps=2,
        trajectories=(0, 1),
        responses=("smse", "mass"),
    )
    return AnalysisRequest(**{**base, **changes})


def test_batch_is_time_major_and_pairs_consecutive_snapshots(workspace):
    info = open_dataset(workspace["data"])
    batch = assemble_batch(info, ("CE-RP", "CE-CRP"), trajectory=1, t_start=1, n_steps=3)
    truth = {c: info.load("test", c, [1])[0] for c in ("CE-RP", "CE-CRP")}
    assert batch.inputs.shape == (6, 4, 16, 16)
    for n in range(6):
        class_name, step = batch.example(n)
        assert (class_name, step) == (("CE-RP", "CE-CRP")[n % 2], 1 + n // 2)
        np.testing.assert_array_equal(batch.inputs[n].numpy(), truth[class_name][step])
        np.testing.assert_array_equal(batch.targets[n].numpy(), truth[class_name][step + 1])
    np.testing.assert_allclose(batch.times, info.times[1:4])


@pytest.mark.slow
def test_pipeline_matches_direct_influence_calls(workspace):
    request = request_for(workspace)
    result = run_analysis(request)
    S, B, T, C = 2, 2, 2, 2
    assert result.H["smse"].shape == (S, B, T, C, T, C)
    assert result.distances.shape == (B, T * C, T * C)
    assert result.checkpoints == ("unet_s1", "unet_s2")
    info = open_dataset(workspace["data"])
    for s, directory in enumerate(workspace["ckpts"]):
        model, _ = ckpt.load(directory)
        for b in range(B):
            batch = assemble_batch(info, request.classes, b, 1, 2)
            for response in ("smse", "mass"):
                direct = influence_matrix(model, batch.inputs, batch.targets, response=response)
                np.testing.assert_allclose(
                    result.H[response][s, b].reshape(4, 4),
                    direct.double().numpy(),
                    rtol=1e-5,
                    atol=1e-12,
                )
                np.testing.assert_allclose(
                    result.H_std[response][s, b].reshape(4, 4),
                    standardize(direct).double().numpy(),
                    rtol=1e-5,
                    atol=1e-9,
                )
    assert np.isfinite(result.top_eigenvalues).all()
    assert (result.top_eigenvalues > 0).all()
    assert result.provenance["dataset_fingerprint"] == info.fingerprint(
        split="test", classes=request.classes
    )
    assert set(result.provenance["checkpoint_fingerprints"]) == {"unet_s1", "unet_s2"}
    assert result.diagnostics[0][0]["estimator"] == "ekfac-krylov"  # the default


def test_result_file_round_trip_without_pickle(workspace, tmp_path, monkeypatch):
    result = run_analysis(
        request_for(
            workspace,
            checkpoints=(str(workspace["ckpts"][0]),),
            trajectories=(0,),
            top_eigenvalue=False,
        )
    )
    path = save_result(result, tmp_path / "R.npz")
    side = json.loads((tmp_path / "R.json").read_text())
    assert side["request"]["classes"] == ["CE-RP", "CE-CRP"]
    assert side["diagnostics"][0][0]["estimator"] == "ekfac-krylov"
    assert "versions" in side["provenance"]
    with np.load(path, allow_pickle=False) as data:
        assert data["H"].shape == (1, 1, 2, 2, 2, 2)
        np.testing.assert_array_equal(data["H"], result.H["smse"])
        np.testing.assert_array_equal(data["H_std__mass"], result.H_std["mass"])
        assert list(data["classes"]) == ["CE-RP", "CE-CRP"]
    back = load_result(path)
    np.testing.assert_array_equal(back.H["mass"], result.H["mass"])
    assert back.request == result.request
    assert np.isnan(back.top_eigenvalues).all()
    with pytest.raises(RequestError, match=r"end in \.npz"):
        save_result(result, tmp_path / "R.pkl")
    # --out <checkpoint>/config.npz replaced the checkpoint's config.json with the sidecar
    checkpoint = tmp_path / "unet_s1"
    checkpoint.mkdir()
    config = b'{"format": "coherence-checkpoint"}'
    (checkpoint / "config.json").write_bytes(config)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    outside = rf"unet_s1 is a checkpoint; write results outside it, e.g. {tmp_path}/R.npz"
    with pytest.raises(RequestError, match=r"unet_s1 is a checkpoint; write results outside"):
        save_result(result, checkpoint / "config.npz")
    with pytest.raises(RequestError, match=outside):  # a folder in it (a snapshot's), too
        save_result(result, checkpoint / "epochs" / "0004" / "R.npz")
    (checkpoint / "model.safetensors").unlink()  # any JSON not a result's, anywhere
    with pytest.raises(RequestError, match=r"config.json exists and is not a result's"):
        save_result(result, checkpoint / "config.npz")
    assert (checkpoint / "config.json").read_bytes() == config
    # in a workspace, the example is its root, not its checkpoints folder beside the models
    listed = tmp_path / "ws" / "checkpoints" / "unet_s1"
    shutil.copytree(checkpoint, listed)
    (tmp_path / "ws" / "datasets").mkdir()  # a workspace, not any folder named checkpoints
    (listed / "model.safetensors").write_bytes(b"weights")
    beside = re.escape(f"write results outside it, e.g. {tmp_path / 'ws' / 'R.npz'}")
    with pytest.raises(RequestError, match=beside):
        save_result(result, listed / "R.npz")
    assert not (checkpoint / "config.npz").exists()
    # nor among a dataset's own files, at its top or in its split folders
    dataset = tmp_path / "ce"
    (dataset / "data" / "train").mkdir(parents=True)
    (dataset / "data" / "train" / "CE-RP.hdf5").write_bytes(b"")
    for inside in (dataset / "R.npz", dataset / "data" / "train" / "R.npz"):
        with pytest.raises(
            RequestError,
            match=rf"ce is a dataset; write results outside it, e\.g\. {tmp_path}/R\.npz",
        ):
            save_result(result, inside)
        assert not inside.exists()
    save_result(result, tmp_path / "beside" / "R.npz")  # a folder beside it is fine
    save_result(result, tmp_path / "beside" / "R.npz")  # a rerun replaces its own result
    (tmp_path / "beside" / "R.json").unlink()  # ... even one that lost its sidecar
    save_result(result, tmp_path / "beside" / "R.npz")
    # a user's own arrays (or any other file) under the name were replaced without a word
    mine = tmp_path / "mine.npz"
    np.savez(mine, x=np.arange(5))
    notes = tmp_path / "notes.npz"
    notes.write_text("precious")
    bare = tmp_path / "bare.npz"  # an .npy's bytes (np.load gives an array), a damaged zip
    np.save(tmp_path / "bare.npy", np.arange(3))
    bare.write_bytes((tmp_path / "bare.npy").read_bytes())
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04garbage")
    for existing in (mine, notes, bare, broken):
        before = existing.read_bytes()
        with pytest.raises(RequestError, match=r"the file exists and is not a result"):
            save_result(result, existing)
        assert existing.read_bytes() == before
    (tmp_path / "folder.json").mkdir()  # a sidecar that is a folder is called one
    with pytest.raises(RequestError, match=r"folder.json exists and is a folder;.*that folder"):
        save_result(result, tmp_path / "folder.npz")
    # a kill between the two renames of an overwrite left the new R.npz beside the old
    # R.json, read as one result (the request said two checkpoints, the arrays held one)
    old_sidecar = (tmp_path / "R.json").read_bytes()
    other = save_result(
        replace(result, H_std={k: v + 1 for k, v in result.H_std.items()}), tmp_path / "S.npz"
    )
    (tmp_path / "R.npz").write_bytes(other.read_bytes())
    assert (tmp_path / "R.json").read_bytes() == old_sidecar
    with pytest.raises(RequestError, match=r"R.json does not describe .*R.npz .*rerun the"):
        load_result(path)
    # a sidecar of an older version records no digest: it goes before the arrays are replaced,
    # so a kill in between leaves a pair that is refused as incomplete, not a mismatched one
    old = json.loads((tmp_path / "R.json").read_text())
    del old["npz_sha256"]
    (tmp_path / "R.json").write_text(json.dumps(old))
    from coherence.analysis import results

    def killed(target, data):
        raise KeyboardInterrupt  # after the first write

    written = results.atomic_write_bytes
    monkeypatch.setattr(results, "atomic_write_bytes", lambda t, d: (written(t, d), killed(t, d)))
    with pytest.raises(KeyboardInterrupt):
        save_result(result, path)
    with pytest.raises(RequestError, match=r"R.json: missing"):
        load_result(path)


@pytest.mark.slow
def test_cli_analyze_writes_result(workspace, tmp_path):
    out = tmp_path / "cli.npz"
    runner = CliRunner()
    args = [
        "analyze",
        "--data",
        str(workspace["data"]),
        "--classes",
        "CE-RP,CE-CRP",
        "--window",
        "0:2",
        "--trajectories",
        "0,1",
        "--out",
        str(out),
        "--response",
        "smse",
        "--response",
        "energy",
    ]
    for c in workspace["ckpts"]:
        args += ["--checkpoint", str(c)]
    args += ["--workspace", str(tmp_path / "ws")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "cost estimate" in result.output and "wrote" in result.output
    assert f"cached in {tmp_path / 'ws' / 'cache'}" in result.output  # where, said
    loaded = load_result(out)
    assert loaded.H["energy"].shape == (2, 2, 2, 2, 2, 2)
    # the headline scores are printed, as the dashboard's row shows them
    from coherence.analysis.scores import compute_scores
    from coherence.analysis.verdict import format_score
    from coherence.report_panels import result_scores

    dominance = compute_scores(loaded.H_std["smse"]).as_list()[0]
    assert dominance.name == "diagonal_dominance"
    printed = " ".join(result.output.split())
    assert f"scores of Ĥ_smse: Diagonal dominance: {format_score(dominance)} Q1–Q3 [" in printed
    assert "scores of Ĥ_smse:" in result.stdout and "cost estimate" not in result.stdout
    assert "over 2 seeds (each the mean of its 2 batches)" in printed and "verdict: " in printed
    assert "Read with care: " in printed  # the reading rests on 2 trajectories, not 6
    assert "2 test trajectories per class and seed (the paper: 6)." in printed
    share = result_scores(loaded).dominant_share  # the fifth score, of the spectrum
    assert f"Dominant-eigenvalue share: {format_score(share)} Q1–Q3 [" in printed
    bad = runner.invoke(app, [a if a != "0:2" else "3:4" for a in args])
    assert bad.exit_code == 2 and "window 3:4" in bad.output
    # the result was cached in the workspace: listed, served again, then cleared
    info = runner.invoke(app, ["cache", "info", "--workspace", str(tmp_path / "ws")])
    assert info.exit_code == 0 and "entries: 1 result, " in info.output, info.output
    listed = " ".join(info.output.split())  # what the entry holds, not its key alone
    # its 2 seeds × 2 batches of units, counted as job records before (most of the bytes)
    assert "1 result, 4 analysis units, 0 rollouts or checks and " in listed
    assert (
        "unet_s1,unet_s2 · ce · CE-RP,CE-CRP · snapshots 0–2 · batches 0-1 · smse+energy · "
        "ekfac-krylov depth 1 λ=0.0001 · weights " in listed
    )
    # each seed's fingerprint, first 8 digits: a retrained seed's results read apart
    stored = loaded.provenance["checkpoint_fingerprints"]
    assert f"weights {','.join(v[:8] for v in stored.values())}" in listed
    same = runner.invoke(app, args)  # the same --out again: said, not silent
    assert same.exit_code == 0 and "it replaced the file there" in same.output, same.output
    again = runner.invoke(app, [a if a != str(out) else str(tmp_path / "again.npz") for a in args])
    assert again.exit_code == 0, again.output
    assert "served without computing" in again.output and "computed earlier in" in again.output
    np.testing.assert_array_equal(load_result(tmp_path / "again.npz").H["smse"], loaded.H["smse"])
    clear = ["cache", "clear", "--workspace", str(tmp_path / "ws")]
    asked = runner.invoke(app, clear)  # no terminal to ask on: refused, nothing removed
    assert asked.exit_code == 2 and "holds 1 result, 4 analysis units" in asked.output, asked.output
    assert "pass --yes to remove them" in " ".join(asked.output.split())
    assert "entries: 1 result, " in runner.invoke(app, [*clear[:1], "info", *clear[2:]]).output
    cleared = runner.invoke(app, [*clear, "--yes"])
    assert cleared.exit_code == 0 and "removed" in cleared.output
    info = runner.invoke(app, ["cache", "info", "--workspace", str(tmp_path / "ws")])
    assert "entries: 0 results, 0 analysis units" in info.output
    for command in ("info", "clear"):  # a mistyped workspace: named, nothing made there
        typo = runner.invoke(app, ["cache", command, "--workspace", str(tmp_path / "wss")])
        assert typo.exit_code == 2 and "no such folder" in typo.output, typo.output
        assert not (tmp_path / "wss").exists()
    # a checkpoint or dataset named as the workspace: refused, no cache/ made inside it
    checkpoint, data = workspace["ckpts"][0], workspace["data"]
    for inputs, kind in ((checkpoint, "checkpoint"), (data, "dataset")):
        for command in (["cache", "info"], ["cache", "clear", "--yes"], args[:-2]):
            said = runner.invoke(app, [*command, "--workspace", str(inputs)])
            assert said.exit_code == 2, said.output
            assert f"{inputs} is a {kind}, not a workspace" in " ".join(said.output.split())
            assert not (inputs / "cache").exists()
    # a workspace beside a dataset's data/ folder is a workspace (it was taken for the dataset)
    project = tmp_path / "proj"
    shutil.copytree(data / "data", project / "data")
    (project / "ws").mkdir()
    beside = runner.invoke(app, ["cache", "info", "--workspace", str(project / "ws")])
    assert beside.exit_code == 0 and "entries: 0 results" in beside.output, beside.output


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"classes": ("CE-RP", "CE-KH")}, RequestError, r"class 'CE-KH' is not in the test split"),
        ({"t_start": 3, "n_steps": 2}, RequestError, r"window 3:2 needs snapshots 3\.\.5"),
        ({"trajectories": (0, 5)}, RequestError, r"trajectory 5 does not exist.*0\.\.1"),
        ({"estimator": "cg"}, RequestError, "needs --rtol"),
        ({"estimator": "exact"}, RequestError, "subspace"),
        ({"responses": ("vorticity",)}, RequestError, "smse"),
        ({"damping": 0.0}, RequestError, "damping"),
        ({"n_steps": 300}, RequestError, "N = 600"),
    ],
)
def test_bad_requests_fail_clearly(workspace, changes, error, message):
    with pytest.raises(error, match=message):
        request = request_for(workspace, **changes)
        run_analysis(request)


def test_mass_on_navier_stokes_and_mismatched_checkpoint(workspace):
    ns = request_for(
        workspace,
        checkpoints=(str(workspace["ns_ckpt"]),),
        data=str(workspace["ns_data"]),
        classes=("NS-Sines", "NS-Gauss"),
    )
    with pytest.raises(RequestError, match=r"mass.*compressible-Euler"):
        run_analysis(ns)
    mismatched = request_for(workspace, checkpoints=(str(workspace["ns_ckpt"]),))
    with pytest.raises(CheckpointError, match="trained on ns data"):
        run_analysis(mismatched)


def test_analyze_refuses_what_configs_refuse_before_its_cost_estimate(workspace, tmp_path):
    """Mass on NS data, a checkpoint of another family, and two models pooled as seeds were
    refused only after the cost estimate had loaded a model and timed it (7 s on the demo)."""

    def analyze(checkpoints, data, classes, response="smse", window="1:2"):
        args = ["analyze", "--data", str(data), "--classes", classes, "--window", window]
        for checkpoint in checkpoints:
            args += ["--checkpoint", str(checkpoint)]
        args += ["--response", response, "--out", str(tmp_path / "r.npz"), "--yes"]
        args += ["--workspace", str(tmp_path / "ws"), "--device", "cpu"]
        run = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
        assert run.exit_code != 0
        assert "cost estimate" not in run.output and not (tmp_path / "r.npz").exists()
        return " ".join(run.output.split())

    ns_ckpt, ns_data, (first, _) = workspace["ns_ckpt"], workspace["ns_data"], workspace["ckpts"]
    said = analyze([ns_ckpt], ns_data, "NS-Sines,NS-Gauss", response="mass")
    assert "mass response needs compressible-Euler data" in said
    said = analyze([ns_ckpt], workspace["data"], "CE-RP,CE-CRP")
    assert "trained on ns data" in said
    # before the window: "use at most 5 steps" came first, then, the window mended, the PDE
    said = analyze([ns_ckpt], workspace["data"], "CE-RP,CE-CRP", window="0:100")
    assert "trained on ns data" in said and "window" not in said
    said = analyze([first, ns_ckpt], workspace["data"], "CE-RP,CE-CRP")
    assert "unet_s1 (unet) and ns_unet (unet) are not seeds" in said
    check_request(request_for(workspace), open_dataset(workspace["data"]))  # a good one passes


def test_cost_estimate_counts_passes_and_memory(workspace):
    request = request_for(workspace)
    model, _ = ckpt.load(workspace["ckpts"][0])
    _, batches = prepare(request)
    cost = estimate_cost(model, request, batches[0].inputs)
    n_params = sum(p.numel() for p in model.parameters())
    assert cost.n_params == n_params and cost.n_examples == 4 and cost.jobs == 4
    assert cost.memory_bytes >= 4 * 4 * n_params  # at least G and g_A for 2 responses
    assert cost.fits and "forward-pass equivalents" in cost.describe()


@pytest.mark.slow  # 9 s or more on 2 cores: in make test, not test-fast
@pytest.mark.parametrize("arch", ["unet", "vit"])
def test_the_memory_estimate_of_a_paper_unit_covers_its_peak_on_a_gpu(arch):
    """Reference: the allocated peak of a paper unit measured on an H200 (N = 48 at 128²,
    three responses, the default estimator; bench/results/paper_unit_*_cuda.json). The
    estimate needs shapes only, so it is recomputed here. It must not be below the peak (a
    job it lets start would run out of memory) nor far above it. Before it counted the
    tangent program's kept values from the trace, the ViT's came out at 43.1 GiB for 58.6."""
    from bench.bench_paper_unit import recorded_estimate

    row = recorded_estimate(arch)  # what `bench_paper_unit --recorded` writes
    assert 1.0 <= row["estimate_gib"] / row["measured_gib"] <= 1.5


def test_the_memory_count_traces_only_where_the_unit_makes_batch_products(
    ce_model, ce_batch, monkeypatch
):
    """ekfac and euclidean without the top eigenvalue make no batch JVP: their estimate must
    not trace the tangent program (seconds, for a trace nothing would reuse); every other
    request counts the program's bytes, so it traces once (then the analysis reuses it)."""
    from coherence.analysis import tangents

    traced: list[tuple[int, ...]] = []
    original = tangents.trace_program
    monkeypatch.setattr(
        tangents, "trace_program", lambda fm, x: traced.append(tuple(x.shape)) or original(fm, x)
    )
    x, _ = ce_batch
    n = len(x)

    def request(estimator: str, top: bool) -> AnalysisRequest:
        return AnalysisRequest(
            checkpoints=("c",), data="d", classes=("CE-RP",), n_steps=n, estimator=estimator,
            top_eigenvalue=top,
        )  # fmt: skip

    tangents.clear_programs()
    for estimator in ("ekfac", "euclidean"):
        estimate_cost(ce_model, request(estimator, top=False), x)
    assert traced == []
    estimate_cost(ce_model, request("ekfac", top=True), x)  # Lanczos makes batch products
    estimate_cost(ce_model, request("ekfac-krylov", top=False), x)
    assert traced == [tuple(x.shape)]  # traced once, at the batch's shape, then cached
    tangents.clear_programs()


@pytest.mark.parametrize(
    ("estimator", "depth", "width"),
    [("subspace", 1, 1), ("krylov", 2, 1), ("ekfac-krylov", 1, 2), ("ekfac-krylov", 3, 2)],
)
def test_cost_estimate_counts_the_products_a_solve_makes(
    ce_model, ce_batch, estimator, depth, width
):
    """The products the solve counts (``diagnostics.batch_jvps`` / ``batch_vjps``) are
    ``krylov_products`` of its block ranks, each block at most ``width`` × N rows (ekfac-krylov:
    span(G) beside M̃⁻¹G, 2N); the estimate counts every block full. Its passes at depth 3
    were ≈ 1.7× too few when they counted N-wide blocks (a dashboard job estimated at 1 min
    ran 2.3 min)."""
    x, y = ce_batch
    n = len(x)
    options = {} if estimator == "subspace" else {"depth": depth}
    diag = compute_influence(ce_model, x, y, estimator=estimator, **options).diagnostics
    ranks = diag.block_ranks or (diag.rank,)
    assert len(ranks) == depth and all(r <= width * n for r in ranks), ranks
    assert (diag.batch_jvps, diag.batch_vjps) == krylov_products(ranks, n)
    assert sum(ranks) >= 0.75 * width * n * depth, ranks  # the bound is close, not loose
    request = AnalysisRequest(
        checkpoints=("c",), data="d", classes=("CE-RP",), n_steps=n, estimator=estimator,
        top_eigenvalue=False, **options,
    )  # fmt: skip
    jvps, vjps = krylov_products([width * n] * depth, n)
    solve = n * PRIMAL_PASSES + n * (jvps * JVP_PASSES + vjps * VJP_PASSES)
    passes = estimate_cost(ce_model, request, x).forward_passes
    gradients = n * VJP_PASSES
    ekfac = n * (1 + 2 * VJP_PASSES) if estimator == "ekfac-krylov" else 0.0
    assert passes == pytest.approx(gradients + ekfac + solve)


def test_repeated_selections_are_named_as_typed_not_as_python_lists():
    """'trajectories [0, 0]' read as Python; a user typed 0,0."""
    base = dict(checkpoints=("c",), data="d", classes=("CE-RP",), n_steps=2)
    with pytest.raises(RequestError, match=r"^trajectories 0,0: distinct non-negative indices"):
        AnalysisRequest(**base | {"trajectories": (0, 0)})
    with pytest.raises(RequestError, match=r"^checkpoints c, c name one twice"):
        AnalysisRequest(**base | {"checkpoints": ("c", "c")})


def test_parse_window():
    assert parse_window("3:12") == (3, 12)
    with pytest.raises(RequestError, match="START:STEPS"):
        parse_window("3-12")


@pytest.mark.slow
def test_influence_matrix_runs_in_float64_and_agrees_with_float32(workspace):
    """A float64 model and batch give a float64 Ĥ, equal to the float32 one to float32's
    accuracy (the dataset → batch → influence path keeps the model's dtype throughout)."""
    info = open_dataset(workspace["data"])
    found = {}
    for dtype in (torch.float32, torch.float64):
        model, _ = ckpt.load(workspace["ckpts"][0])
        model.to(dtype)
        batch = assemble_batch(info, ("CE-RP", "CE-CRP"), 0, 0, 2, dtype=dtype)
        found[dtype] = influence_matrix(model, batch.inputs, batch.targets)
    H32, H64 = found[torch.float32], found[torch.float64]
    assert H64.dtype == torch.float64 and H32.dtype == torch.float32 and H64.shape == (4, 4)
    assert float((H32.double() - H64).norm() / H64.norm()) < 1e-3


@pytest.mark.slow
def test_a_top_eigenvalue_stopped_at_its_cap_is_never_silent(workspace, tmp_path, monkeypatch):
    """Lanczos stopped at its step cap gave a lower bound read as the value, without a word.
    Each unit keeps its relative bound; the CLI, the dashboard and the report warn from it."""
    from coherence.analysis import pipeline
    from coherence.analysis.diagnostics import result_warnings

    request = request_for(workspace, trajectories=(0,), responses=("smse",))
    converged = run_analysis(request)
    cells = [cell for row in converged.diagnostics for cell in row]
    assert all(cell["top_eigenvalue_bound"] <= 1e-4 for cell in cells)
    assert result_warnings(converged.diagnostics, converged.checkpoints) == []
    monkeypatch.setattr(pipeline, "TOP_EIGEN_STEPS", 1)  # one step cannot meet 1e-4
    capped = run_analysis(request)
    assert all(cell["top_eigenvalue_steps"] == 1 for row in capped.diagnostics for cell in row)
    assert (capped.top_eigenvalues <= converged.top_eigenvalues * (1 + 1e-6)).all()  # below
    (said,) = result_warnings(capped.diagnostics, capped.checkpoints)
    assert said.startswith("the top eigenvalue's Lanczos stopped at its step cap unconverged")
    assert "in 2 of 2 (checkpoint, batch) units" in said and "lower bounds" in said
    old = [
        [{k: v for k, v in c.items() if not k.startswith("top_")} for c in row]
        for row in capped.diagnostics
    ]  # cached before the bound was kept: nothing to say
    assert result_warnings(old, capped.checkpoints) == []
    cells = [[{"top_eigenvalue_bound": b}] for b in (0.5, 0.9, 1e-6, float("nan"))]
    (worst,) = result_warnings(cells, ("a", "b", "c", "d"))  # NaN: loose, and named worst
    assert "in 3 of 4 (checkpoint, batch) units (worst relative bound nan > 0.0001, d)" in worst
    (worst,) = result_warnings(cells[:3], ("a", "b", "c"))
    assert "(worst relative bound 0.9 > 0.0001, b)" in worst
    out = tmp_path / "capped.npz"
    args = ["analyze", "--data", str(workspace["data"]), "--classes", "CE-RP,CE-CRP"]
    args += ["--window", "1:2", "--trajectories", "0", "--response", "smse", "--yes"]
    args += ["--out", str(out), "--workspace", str(tmp_path / "ws"), "--device", "cpu"]
    for checkpoint in workspace["ckpts"]:
        args += ["--checkpoint", str(checkpoint)]
    run = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert run.exit_code == 0, run.output
    assert "Lanczos stopped at its step cap" in " ".join(run.output.split())


def test_progress_gives_the_top_eigenvalue_its_share_of_the_unit(workspace):
    """The Lanczos steps start where the cost model puts them: late in a unit with a solve,
    early in a euclidean one (no solve), where a fixed 99% held the bar for most of the
    analysis. Fractions only grow and stay within [0, 1]."""
    from coherence.analysis.pipeline import compute_unit, unit_passes

    model, _ = ckpt.load(workspace["ckpts"][0])
    starts = {}
    for estimator in ("euclidean", "ekfac-krylov"):
        request = request_for(workspace, estimator=estimator, trajectories=(0,))
        batch = assemble_batch(open_dataset(workspace["data"]), request.classes, 0, 1, 2)
        reports: list[tuple[float, str]] = []
        compute_unit(model, batch, request, 0, 0, progress=lambda *r, into=reports: into.append(r))
        fractions = [f for f, _ in reports]
        assert fractions == sorted(fractions) and fractions[0] >= 0 and fractions[-1] <= 1
        (starts[estimator],) = [f for f, stage in reports if stage == "top eigenvalue (Lanczos)"]
        gradients, solve, lanczos = unit_passes(request)
        share = (gradients + solve) / (gradients + solve + lanczos)
        assert starts[estimator] == pytest.approx(share)
    assert starts["euclidean"] < 0.2 < starts["ekfac-krylov"]


def test_weights_changed_after_the_save_are_refused_not_analysed(workspace, tmp_path):
    """A byte flipped in the weights keeps every value finite and the file readable: without
    the manifest check the analysis ran on weights nobody trained and cached the result."""
    import shutil

    copy = tmp_path / "flipped"
    shutil.copytree(workspace["ckpts"][0], copy)
    weights = copy / ckpt.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # the last float's lowest mantissa bit
    weights.write_bytes(bytes(data))
    ckpt.load(copy)  # still loads: only the manifest tells
    with pytest.raises(CheckpointError, match="not the set that was saved together"):
        run_analysis(request_for(workspace, checkpoints=(str(copy),), trajectories=(0,)))


def test_a_model_with_non_finite_gradients_is_refused_by_name(workspace, tmp_path):
    """Finite weights, NaN outputs (a normalization std of 0 saved with them): every
    estimator's solve failed deep in an eigensolver with a LinAlgError traceback."""
    import shutil

    from coherence.analysis.influence import NonFiniteModelError

    copy = tmp_path / "zero_std"
    shutil.copytree(workspace["ckpts"][0], copy)
    model, config = ckpt.load(copy)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if "std" in name:
                buffer.zero_()
    assert not torch.isfinite(model(torch.ones(1, 4, 16, 16))).all()
    ckpt.save_checkpoint(copy, model, config, ckpt.read_history(copy), None)
    for estimator in ("ekfac-krylov", "euclidean"):
        with pytest.raises(NonFiniteModelError, match=rf"checkpoint {copy}: the model's"):
            run_analysis(
                request_for(
                    workspace, checkpoints=(str(copy),), trajectories=(0,), estimator=estimator
                )
            )


def test_a_data_value_that_overflows_is_blamed_on_the_data(workspace, tmp_path):
    """One density cell of 3e38 (finite: the reader's NaN and sign checks pass it) made the
    gradients overflow, and the message told the user to retrain the checkpoint."""
    import shutil

    import h5py

    from coherence.analysis.influence import ExtremeDataError

    copy = tmp_path / "huge"
    shutil.copytree(workspace["data"], copy)
    with h5py.File(copy / "data" / "test" / "CE-RP.hdf5", "a") as f:
        f["t0_fields/density"][1, 2, 3, 3] = 3e38  # in the window 1:2
    request = request_for(workspace, data=str(copy), trajectories=(1,))
    with pytest.raises(ExtremeDataError, match=r"huge/data/test/CE-RP.hdf5, trajectory 1: the"):
        run_analysis(request)


def add_class_of_gamma(data, name: str, gamma: float, like: str = "CE-RP") -> None:
    """A copy of class ``like``'s files in every split as class ``name`` of another γ."""
    import h5py

    for split_dir in (data / "data").iterdir():
        target = split_dir / f"{name}.hdf5"
        shutil.copy(split_dir / f"{like}.hdf5", target)
        with h5py.File(target, "a") as f:
            f.attrs["initial_condition_class"] = name
            f.attrs["gamma"] = gamma
            f["scalars/gamma"][()] = gamma


def test_a_class_of_constants_the_checkpoint_never_trained_on_is_refused(workspace, tmp_path):
    """A class of γ = 1.6 beside the training classes' 1.4 was analysed without a word: the
    check compared the training classes' constants only (a hostile-workspace campaign)."""
    copy = tmp_path / "gammas"
    shutil.copytree(workspace["data"], copy)
    add_class_of_gamma(copy, "CE-G16", 1.6)
    add_class_of_gamma(copy, "CE-SAME", 1.4)  # a new class of the trained γ: analysed
    checkpoint = workspace["ckpts"][0]
    with pytest.raises(CheckpointError) as info:
        check_request(
            request_for(workspace, data=str(copy), classes=("CE-RP", "CE-G16")), open_dataset(copy)
        )
    assert "never trained on the physical constants of class CE-G16, which has gamma 1.6 " in str(
        info.value
    )
    assert "(the checkpoint's: 1.4)" in str(info.value)
    assert checkpoint.name in str(info.value)
    check_request(
        request_for(workspace, data=str(copy), classes=("CE-RP", "CE-SAME")), open_dataset(copy)
    )


def test_a_checkpoint_meets_only_data_of_its_time_step(workspace, tmp_path):
    """Trained on snapshots 0.05 apart: the same states 0.1 apart (another --downsample of a
    Well file, say) are another map to learn; the analysis refused nothing and the dashboard
    offered the pair. A checkpoint that recorded no physics (older) is not checked."""
    from coherence.dashboard.workspace_scan import scan_workspace

    config = ckpt.read_config(workspace["ckpts"][0])
    assert config.dataset["physics"]["dt"] == pytest.approx(0.05)
    coarse = write_dataset(tmp_path / "ws" / "datasets" / "coarse", t_end=0.4)
    assert open_dataset(coarse).physics("test", ("CE-RP",))["dt"] == pytest.approx(0.1)
    with pytest.raises(
        CheckpointError, match=r"trained on data with dt 0.05 \(the dataset's: 0.1\)"
    ):
        run_analysis(request_for(workspace, data=str(coarse), trajectories=(0,)))
    import shutil

    shutil.copytree(workspace["ckpts"][0], tmp_path / "ws" / "checkpoints" / "unet_s1")
    catalog = scan_workspace(tmp_path / "ws")
    (entry,) = catalog.checkpoints
    assert not entry.fits(catalog.dataset("coarse"))  # not offered together
    same = write_dataset(tmp_path / "ws" / "datasets" / "same", t_end=0.2)
    assert entry.fits(scan_workspace(tmp_path / "ws").dataset("same"))
    assert ckpt.physics_differences({}, {"dt": 0.1}) == []  # nothing recorded: not checked
    assert ckpt.physics_differences({"dt": "x", "gamma": 1.4}, {"dt": 0.1, "gamma": 1.3}) == [
        "gamma 1.4 (the dataset's: 1.3)"
    ]
    assert same.is_dir()


def test_window_and_batch_size_messages_advise_what_can_work():
    """'shrink' for an N that is too small and 'at most 0 steps' were advice that cannot
    work; each message now offers only fixes that are valid."""
    from coherence.analysis.request import examples_error, window_error

    assert examples_error(1, 1).endswith("widen the window or add classes")
    assert examples_error(40, 16).endswith("shrink the window or the classes")
    assert window_error(20, 1, transitions=20).endswith("use a start ≤ 19")
    assert window_error(18, 4, transitions=20).endswith("use a start ≤ 16 or at most 2 steps")
    assert window_error(0, 25, transitions=20).endswith("use at most 20 steps")
    assert window_error(25, 30, transitions=20).endswith("use a start < 20")


def test_an_analysis_pools_seeds_of_one_model_only(workspace, tmp_path):
    """A UNet beside a wider UNet (or a ViT) was pooled as seeds of one model."""
    from coherence.analysis.pipeline import check_seeds

    first, second = (str(c) for c in workspace["ckpts"])
    check_seeds((first, second))  # two seeds of one model: fine
    wider = tmp_path / "wider"
    info = open_dataset(workspace["data"])
    overrides = {**TINY_OVERRIDES, "base_width": 16}
    args = TrainingArgs(
        seed=3, epochs=1, batch_size=8, transitions=4, device="cpu", overrides=overrides
    )
    train(info.root, wider, args)
    with pytest.raises(
        RequestError,
        match=r"unet_s1 \(unet\) and wider \(unet\) are not seeds of one model \(they differ "
        r"in base_width 8 vs 16\)",
    ):
        run_analysis(request_for(workspace, checkpoints=(first, str(wider)), trajectories=(0,)))
    import shutil

    copy = shutil.copytree(first, tmp_path / "unet_s9")  # one model under a second name
    with pytest.raises(RequestError, match=r"unet_s1 and unet_s9 hold the same weights"):
        run_analysis(request_for(workspace, checkpoints=(first, str(copy)), trajectories=(0,)))
    (copy / ckpt.MANIFEST_FILE).unlink()  # saved without a manifest: the file's own digest
    with pytest.raises(RequestError, match=r"unet_s1 and unet_s9 hold the same weights"):
        check_seeds((first, str(copy)))


def test_seeds_of_one_model_share_a_training_recipe(workspace, tmp_path):
    """A run of another length (or its snapshot of another epoch) was pooled as a seed: the
    difference training makes read as the spread across seeds. A snapshot at the seeds' own
    epoch is one of them; a checkpoint that records no recipe (imported) is no evidence."""
    from coherence.analysis.pipeline import check_seeds

    first, _ = (str(c) for c in workspace["ckpts"])  # 1 epoch each
    longer = tmp_path / "unet_s3"
    args = TrainingArgs(
        seed=3, epochs=2, batch_size=8, transitions=4, device="cpu", overrides=TINY_OVERRIDES
    )
    train(open_dataset(workspace["data"]).root, longer, args)
    with pytest.raises(
        RequestError,
        match=r"unet_s1 and unet_s3 were trained differently "
        r"\(epochs 1 vs 2\)",
    ) as refused:
        run_analysis(request_for(workspace, checkpoints=(first, str(longer)), trajectories=(0,)))
    assert "Training dynamics" in str(refused.value)
    check_seeds((first, str(longer / "epochs" / "0001")))  # the same recipe at epoch 1
    # the classes named (in another order) are the same data as none named (all of them)
    info = open_dataset(workspace["data"])
    named = tmp_path / "unet_s4"
    args = TrainingArgs(
        seed=4,
        epochs=1,
        batch_size=8,
        transitions=4,
        device="cpu",
        overrides=TINY_OVERRIDES,
        classes=tuple(reversed(info.classes)),
    )
    train(info.root, named, args)
    check_seeds((first, str(named)))
    other_lr = shutil.copytree(longer / "epochs" / "0001", tmp_path / "unet_lr")
    config = json.loads((other_lr / ckpt.CONFIG_FILE).read_text())
    config["training"]["args"]["lr"] = 1e-2
    (other_lr / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(RequestError, match=r"trained differently \(lr 0.0005 vs 0.01\)"):
        check_seeds((first, str(other_lr)))
    del config["training"]  # imported: no recipe recorded, nothing to compare
    (other_lr / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    (other_lr / ckpt.HISTORY_FILE).unlink()
    check_seeds((first, str(other_lr)))


def test_analyze_warns_before_starting_about_an_rtol_that_cannot_act(workspace):
    from coherence.cli_analyze import _option_warnings

    default = request_for(workspace)
    assert _option_warnings(default, None) == []
    (ignored,) = _option_warnings(default, 1e-3)
    assert ignored == "--rtol 0.001 applies to the cg estimator only; ekfac-krylov ignores it"
    tiny = request_for(workspace, estimator="cg", rtol=1e-12)
    (unreachable,) = _option_warnings(tiny, 1e-12)
    assert "below what float32 residuals reliably reach" in unreachable
    (stalls,) = _option_warnings(request_for(workspace, estimator="cg", rtol=1e-5), 1e-5)
    assert "stall between about 1e-6 and 1e-4, by model" in stalls  # 1.8e-4 seen at λ = 1e-2
    assert _option_warnings(request_for(workspace, estimator="cg", rtol=1e-2), 1e-2) == []
    # options an estimator does not use were dropped without a word
    euclidean = request_for(workspace, estimator="euclidean")
    given = {"depth": 3, "cg_start": None, "energy_threshold": 0.99}
    assert _option_warnings(euclidean, None, given) == [
        "--depth 3 does not apply to euclidean; it is ignored",
        "--energy-threshold 0.99 does not apply to euclidean; it is ignored",
    ]
    cold = {"depth": None, "cg_start": "cold", "energy_threshold": None}
    assert _option_warnings(default, None, cold) == [
        "--cg-start cold does not apply to ekfac-krylov; it is ignored"
    ]
    used = {"depth": 2, "cg_start": None, "energy_threshold": 0.99}
    assert _option_warnings(default, None, used) == []  # ekfac-krylov uses both
    cold_cg = request_for(workspace, estimator="cg", rtol=1e-2, cg_start="cold")
    assert _option_warnings(cold_cg, 1e-2, {"depth": 2, "cg_start": "cold"}) == [
        "--depth 2 does not apply to cg; it is ignored"  # a cold start has no Krylov space
    ]
    (one_step,) = _option_warnings(request_for(workspace, t_start=3, n_steps=1), None)
    assert one_step.startswith("--window 3:1 has 1 time step: the result holds the class-to")
    cg = request_for(workspace, estimator="cg", rtol=1e-2)
    assert _option_warnings(cg, 1e-2, {"max_iter": 500}) == []  # the default, typed: used
    assert _option_warnings(default, None, {"max_iter": 2000}) == [
        "--max-iter 2000 does not apply to ekfac-krylov; it is ignored"
    ]


@pytest.mark.slow
def test_cg_iteration_cap_is_a_request_field_keyed_only_where_it_differs(workspace, tmp_path):
    """cg stopped at a fixed 500 iterations per column: the demo ViT needs up to 1324 at the
    paper's 5e-2 even from the deflated start. The cap is the request's (`--max-iter`), its
    own cache key, and the keys of every earlier request (the default cap) are unchanged."""
    from coherence.analysis.vocabulary import CG_MAX_ITER
    from coherence.cache.keys import request_key

    cg = request_for(workspace, estimator="cg", rtol=1e-9, trajectories=(0,), responses=("smse",))
    assert "max_iter" not in cg.to_dict() and cg.max_iter == CG_MAX_ITER  # keys as before
    capped = replace(cg, max_iter=2)
    assert capped.to_dict()["max_iter"] == 2
    assert AnalysisRequest.from_dict(capped.to_dict()) == capped
    assert request_key(capped) != request_key(cg)
    assert replace(request_for(workspace), max_iter=2).max_iter == CG_MAX_ITER  # unused: default
    assert replace(request_for(workspace), max_iter=0).max_iter == CG_MAX_ITER  # ignored, as said
    for bad in (0, 10**6, 2.5, True):
        with pytest.raises(RequestError, match=r"max_iter=\S+: must be a whole number from 1 to"):
            replace(cg, max_iter=bad)
    result = run_analysis(capped)
    cells = [cell for row in result.diagnostics for cell in row]
    assert all(cell["max_iter"] == 2 and max(cell["iterations"]) <= 2 for cell in cells)
    assert all(cell["converged"] is False for cell in cells)  # 1e-9 in two iterations: no
    out = tmp_path / "capped.npz"
    args = ["analyze", "--data", str(workspace["data"]), "--classes", "CE-RP,CE-CRP"]
    args += ["--window", "1:2", "--trajectories", "0", "--response", "smse", "--yes"]
    args += ["--estimator", "cg", "--rtol", "1e-9", "--max-iter", "2", "--out", str(out)]
    args += ["--workspace", str(tmp_path / "ws"), "--device", "cpu"]
    for checkpoint in workspace["ckpts"]:
        args += ["--checkpoint", str(checkpoint)]
    run = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert run.exit_code == 0, run.output
    said = " ".join(run.output.split())
    assert "cg did not converge" in said and "raise --max-iter" in said
    assert load_result(out).request.max_iter == 2
    # a bad cap is named by its flag (it read "max_iter must be …; got max_iter=-5")
    at = args.index("--max-iter") + 1
    bad = [*args[:at], "-5", *args[at + 1 :]]
    run = CliRunner().invoke(app, bad, env={"COLUMNS": "300"})
    said = " ".join(run.output.split())
    assert run.exit_code == 2 and "error: --max-iter -5: must be a whole number" in said, said
