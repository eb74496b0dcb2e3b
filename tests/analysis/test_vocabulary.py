"""One vocabulary, one rule per value: requests hold enums, accept their names, keep their
canonical JSON (and so the cache keys) byte for byte, and every layer raises the same message
for the same bad value."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch

from coherence.analysis import vocabulary as V
from coherence.analysis.batch import check_window
from coherence.analysis.influence import compute_influence
from coherence.analysis.request import AnalysisRequest, InfluenceOptions, window_error
from coherence.cache.keys import canonical_json
from coherence.errors import RequestError
from coherence.io import check_device, resolve_device
from coherence.surrogates.training import TrainingArgs

BASE = {
    "checkpoints": ("/c/a", "/c/b"),
    "data": "/d",
    "classes": ("CE-RP", "CE-CRP"),
    "n_steps": 4,
    "trajectories": (0, 2),
}
# sha256 of the canonical JSON of these requests, computed before the enums existed (when
# requests held strings): the cache keys hash exactly this text. cg_deflated changed on
# purpose in issue 14: the deflated start became a krylov basis, so its key now records the
# depth and the krylov energy threshold (1.0), and results of the old start are not served.
CASES = {
    "subspace": (
        {"estimator": "subspace"},
        "43364198dbbfc375a75c4d42d67e91614619575ed253f0cfac8493752af11374",
    ),
    "krylov": (
        {"estimator": "krylov", "depth": 3, "responses": ("smse", "mass")},
        "8148584d4ff6df850f6e8b094758dfc1cd0bc8cc05dca6b0bddcc1a374d64f6a",
    ),
    "cg_deflated": (
        {"estimator": "cg", "rtol": 1.5e-2, "damping": 1e-3},
        "e74993d2b76832b915e1ea697c3accac96ea86f7af4de8abc12fd8fc67ae9221",
    ),
    "cg_cold": (
        {"estimator": "cg", "rtol": 5e-2, "cg_start": "cold", "device": "cpu"},
        "ef8c9daf03733cfaafaff1e80c9503c3c362c36c58a5db6ec9ebce57319e58d5",
    ),
    "euclidean": (
        {"estimator": "euclidean", "responses": ("energy", "smse"), "top_eigenvalue": False},
        "33df77d9cd4559462bb518c6fc4dbb75e13c95dae3b515069d01aedd9c087102",
    ),
}
ENUMS = {"estimator": V.Estimator, "cg_start": V.CGStart, "device": V.Device}


def _as_enums(changes: dict) -> dict:
    out = {k: ENUMS[k](v) if k in ENUMS else v for k, v in changes.items()}
    if "responses" in out:
        out["responses"] = tuple(V.Response(r) for r in out["responses"])
    return out


def _digest(request: AnalysisRequest) -> str:
    return hashlib.sha256(canonical_json(request.to_dict()).encode()).hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_canonical_json_is_unchanged_from_names_or_enums(case):
    changes, expected = CASES[case]
    from_names = AnalysisRequest(**BASE, **changes)
    from_enums = AnalysisRequest(**BASE, **_as_enums(changes))
    assert _digest(from_names) == _digest(from_enums) == expected
    assert from_names == from_enums and hash(from_names) == hash(from_enums)
    assert AnalysisRequest.from_dict(json.loads(json.dumps(from_names.to_dict()))) == from_names
    # plain strings in the JSON form, enums on the request
    assert all(type(v) is str for v in from_names.to_dict()["responses"])
    assert type(from_names.to_dict()["estimator"]) is str


@pytest.mark.parametrize(
    "changes",
    [
        {"estimator": "subspace", "depth": 2},  # subspace: depth unused
        {"estimator": "cg", "rtol": 5e-2, "cg_start": "cold", "depth": 7},
        {"estimator": "euclidean", "cg_start": "cold", "depth": 3},
    ],
)
def test_unused_options_do_not_break_the_round_trip(changes):
    """An option the estimator does not use is recorded as None and reloads as its default:
    the request equals its own round trip (and keeps its key)."""
    request = AnalysisRequest(**BASE, **changes)
    again = AnalysisRequest.from_dict(json.loads(json.dumps(request.to_dict())))
    assert again == request and _digest(again) == _digest(request)
    assert request.depth == V.DEFAULT_DEPTH


def test_a_deflated_cg_record_from_before_the_krylov_start_reloads_as_depth_1():
    """Records of deflated cg written before its start became a Krylov basis have depth None
    (their start was span(G), the Krylov start of depth 1): they must not reload labelled as
    the depth-4 start that never ran."""
    record = AnalysisRequest(**BASE, estimator="cg", rtol=5e-2, depth=1).to_dict()
    record.update(depth=None, energy_threshold=1 - 1e-4)
    old = AnalysisRequest.from_dict(record)
    assert old.depth == 1 and old.energy_threshold == 1 - 1e-4
    assert old.cg_start is V.CGStart.DEFLATED


def test_a_new_damping_is_bounded_and_a_stored_one_still_reads():
    """--damping 1e39 crashed in Lanczos (float32 overflow): a λ asked for now is refused
    above 1e12; a stored request past it (computed before the bound) still reads, or its
    cache entry would be dropped as damaged."""
    from coherence.analysis.request import check_new_damping

    with pytest.raises(RequestError, match=r"damping=1e\+39: at most 1e\+12 \(λ that far"):
        check_new_damping(1e39)
    check_new_damping(1e12)
    with pytest.raises(RequestError, match=r"damping=2e\+12: at most 1e\+12"):
        check_new_damping(2e12)  # just past the bound (a bound of 1e13 passed every test)
    stored = AnalysisRequest(**BASE, damping=1e20)
    assert AnalysisRequest.from_dict(stored.to_dict()) == stored


def test_requests_hold_enums_that_behave_as_their_names():
    request = AnalysisRequest(
        **BASE, estimator="cg", rtol=1e-2, responses=("mass", "smse"), device="cpu"
    )
    assert request.estimator is V.Estimator.CG and request.cg_start is V.CGStart.DEFLATED
    assert request.responses == (V.Response.MASS, V.Response.SMSE)
    assert request.device is V.Device.CPU and request.torch_device == torch.device("cpu")
    assert request.estimator == "cg" and f"{request.responses[0]}" == "mass"
    assert {"mass": 1}[request.responses[0]] == 1  # hashes as its name
    # a response named twice is the same request (it was its own cache entry, smse+smse)
    twice = AnalysisRequest(**BASE, responses=("smse", "mass", "smse"))
    assert twice == AnalysisRequest(**BASE, responses=("smse", "mass"))
    options = request.influence_options
    assert options.estimator is V.Estimator.CG and options.rtol == 1e-2
    assert TrainingArgs(device="cpu").device is V.Device.CPU
    assert TrainingArgs(device="cpu").to_dict()["device"] == "cpu"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"estimator": "newton"}, "unknown estimator 'newton'; choose one of: 'subspace'"),
        ({"responses": ("vorticity",)}, "unknown response 'vorticity'"),
        ({"cg_start": "warm", "estimator": "cg", "rtol": 0.1}, "unknown cg start 'warm'"),
        ({"damping": 0.0}, "damping=0.0: must be a finite number > 0"),
        ({"damping": float("nan")}, "damping=nan: must be a finite number > 0"),
        ({"estimator": "cg"}, "estimator cg needs rtol"),
        ({"rtol": 1.5}, "rtol=1.5: must lie in (0, 1)"),
        ({"rtol": 1.0}, "rtol=1.0: must lie in (0, 1)"),  # the edge: a solve that stops at once
        ({"energy_threshold": 1.5}, "energy_threshold=1.5: must lie in (0, 1]"),
        ({"depth": 0}, "depth=0: must be an integer from 1 to 16"),
    ],
)
def test_one_rule_one_message_for_request_options_and_engine(changes, message):
    """AnalysisRequest, InfluenceOptions and compute_influence raise the same sentence."""
    with pytest.raises(RequestError) as from_request:
        AnalysisRequest(**BASE, **changes)
    with pytest.raises(RequestError) as from_options:
        InfluenceOptions(**changes)
    model = torch.nn.Conv2d(4, 4, 1).double()
    x = torch.ones(2, 4, 2, 2, dtype=torch.float64)
    engine = {("response" if k == "responses" else k): v for k, v in changes.items()}
    with pytest.raises(RequestError) as from_engine:
        compute_influence(model, x, x, **engine)
    assert message in str(from_request.value)
    assert str(from_request.value) == str(from_options.value) == str(from_engine.value)


def test_window_rule_lives_in_the_request():
    assert window_error(0, 16) is None and window_error(0, 16, 16) is None
    assert "start must be ≥ 0" in window_error(-1, 4)
    assert "needs snapshots 3..5" in window_error(3, 2, 4, "tiny")
    with pytest.raises(RequestError, match="start must be ≥ 0"):
        AnalysisRequest(**{**BASE, "t_start": -1})  # refused before any dataset is opened

    class Info:  # the two attributes check_window reads
        times = range(5)
        root = type("Root", (), {"name": "tiny"})()

    with pytest.raises(RequestError) as info:
        check_window(Info(), 3, 2)
    assert str(info.value) == window_error(3, 2, 4, "tiny")


def test_one_device_rule():
    assert check_device("auto") is V.Device.AUTO
    assert resolve_device(V.Device.CPU) == resolve_device("cpu") == torch.device("cpu")
    for build in (
        lambda d: AnalysisRequest(**BASE, device=d),
        lambda d: TrainingArgs(device=d),
        resolve_device,
    ):
        with pytest.raises(RequestError, match=r"device='gpu': choose auto, cpu or cuda"):
            build("gpu")
        if not torch.cuda.is_available():
            with pytest.raises(RequestError, match="no CUDA GPU is visible; use auto or cpu"):
                build("cuda")


def test_requests_import_without_torch():
    code = (
        "import sys\n"
        "from coherence.analysis.request import AnalysisRequest\n"
        "import coherence.analysis.diagnostics, coherence.analysis.vocabulary\n"
        "AnalysisRequest(checkpoints=('a',), data='d', classes=('CE-RP',), n_steps=2)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_request_names_the_splits_it_can_read():
    """--split nope was met with "import a nope file into it"."""
    from coherence.analysis.request import AnalysisRequest
    from coherence.errors import RequestError

    with pytest.raises(RequestError, match=r"split 'nope': choose one of train, valid, test"):
        AnalysisRequest(checkpoints=("a",), data="d", classes=("CE-RP",), n_steps=2, split="nope")
