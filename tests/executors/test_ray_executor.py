"""The Ray executor on a real local cluster (2 CPUs, started once per session): the same
numbers and cache entries as the local executor, identical training checkpoints, retry after
a killed worker, cancel, refused versions and a fast refusal of an unreachable address."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from coherence.analysis import pipeline
from coherence.cache import JobRunner
from coherence.cache.jobs import JobCancelled
from coherence.cache.keys import request_key, unit_keys
from coherence.errors import RequestError
from coherence.executors import ADDRESS_ENV, ClusterError, TrainRun, get_executor
from coherence.executors.local import LocalExecutor
from coherence.executors.ray_cluster import RayExecutor
from coherence.executors.ray_tasks import TEST_UNIT_DELAY_ENV, TEST_UNIT_DIR_ENV
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates import snapshots
from coherence.surrogates.training import train, training_lock
from tests.executors.conftest import local_head
from tests.fixtures import REPO, free_port, quick_request, tiny_args, torch_threads

pytest.importorskip("ray")


@pytest.fixture(autouse=True)
def one_thread_like_the_workers(monkeypatch):
    """The cluster's workers compute on one torch thread (COHERENCE_TORCH_THREADS=1 in their
    environment); so does every local reference here, in this process and in its compute
    slot: the same reductions give the same bits (CI leaves the variable unset, and a 2-core
    slot would run two threads)."""
    monkeypatch.setenv("COHERENCE_TORCH_THREADS", "1")
    with torch_threads(1):
        yield


def assert_same_result(a, b) -> None:
    """Equal to float64 round-off (in practice bit for bit: same code, same threads)."""
    for response in a.request.responses:
        np.testing.assert_allclose(a.H[response], b.H[response], rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(a.H_std[response], b.H_std[response], rtol=1e-12)
    np.testing.assert_allclose(a.top_eigenvalues, b.top_eigenvalues, rtol=1e-12)
    np.testing.assert_allclose(a.subspace_spectra, b.subspace_spectra, rtol=1e-12)


def renamed(checkpoint: Path, name: str) -> Path:
    """The checkpoint under another directory name (same bytes, same cache keys)."""
    target = checkpoint.parent / name
    shutil.copytree(checkpoint, target)
    return target


def hooked(ray_address: str, directory: Path, **options) -> RayExecutor:
    """A Ray executor whose unit tasks record their pid and sleep on their first attempt."""
    directory.mkdir(exist_ok=True)
    env = {TEST_UNIT_DIR_ENV: str(directory), TEST_UNIT_DELAY_ENV: "120"}
    return RayExecutor(ray_address, runtime_env={"env_vars": env}, **options)


def in_thread(function) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = function()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def wait_for(path: Path, timeout: float = 120) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return [int(line) for line in path.read_text().split()]
        time.sleep(0.1)
    raise AssertionError(f"{path} did not appear within {timeout} s")


@pytest.mark.slow
def test_analysis_on_ray_equals_local_and_lands_in_the_same_cache_entry(
    ray_address, checkpoint, tiny_dataset, tmp_path
):
    request = quick_request(
        checkpoint, tiny_dataset, trajectories=(0, 1), estimator="subspace", top_eigenvalue=True
    )
    local = JobRunner(tmp_path / "local").run(request, executor=LocalExecutor())
    runner = JobRunner(tmp_path / "cluster")
    stages = []
    on_ray = runner.run(
        request, executor=RayExecutor(ray_address), progress=lambda f, s: stages.append((f, s))
    )
    assert_same_result(on_ray, local)
    assert on_ray.provenance["device"].startswith(f"ray {ray_address}")
    assert (1.0, "2/2 units done on the Ray cluster") in stages  # then the store's last step
    # the same content key, and the same unit entries, as a local run
    key = request_key(request)
    assert runner.status(key).state == "done"
    assert runner.store.get(key) is not None
    for row in unit_keys(request):
        for unit_key in row:
            assert runner.store.get_unit(unit_key) is not None
    # a local job on that workspace is served from the cluster's units without computing
    subset = quick_request(
        checkpoint, tiny_dataset, trajectories=(1,), estimator="subspace", top_eigenvalue=True
    )
    served = runner.materialize(subset)
    assert served is not None
    np.testing.assert_array_equal(served.H["smse"][0, 0], local.H["smse"][0, 1])


def test_data_that_overflows_on_a_worker_is_named_by_its_file(
    ray_address, checkpoint, tiny_dataset, tmp_path
):
    """The worker holds a batch's arrays, not its files: its overflow message named the unit
    only, where a local run names the class file to re-import. The driver names it now."""
    import h5py

    from coherence.analysis.influence import ExtremeDataError

    data = tmp_path / "huge"
    shutil.copytree(tiny_dataset, data)
    with h5py.File(data / "data" / "test" / "CE-CRP.hdf5", "a") as f:
        f["t0_fields/density"][1, 0, 3, 3] = 3e38
    request = quick_request(checkpoint, data, trajectories=(1,))
    with pytest.raises(ExtremeDataError) as local:
        pipeline.run_analysis(request)
    with pytest.raises(ExtremeDataError) as on_ray:
        RayExecutor(ray_address).run_analysis(request)
    assert str(on_ray.value) == str(local.value)
    assert str(on_ray.value).startswith(f"{data / 'data' / 'test' / 'CE-CRP.hdf5'}, trajectory 1")


@pytest.mark.slow
def test_a_dashboard_job_with_the_address_set_computes_on_the_cluster(
    ray_address, checkpoint, tiny_dataset, workspace, monkeypatch
):
    """JobRunner.submit → detached worker → compute_job: COHERENCE_RAY_ADDRESS is all it takes."""
    monkeypatch.setenv(ADDRESS_ENV, ray_address)
    runner = JobRunner(workspace)
    request = quick_request(checkpoint, tiny_dataset)
    key = runner.submit(request)
    deadline = time.monotonic() + 180
    while (status := runner.status(key)).active and time.monotonic() < deadline:
        time.sleep(0.3)
    assert status.state == "done", status
    log = Path(status.log).read_text()
    assert f"computing on the Ray cluster at {ray_address}" in log
    result = runner.result(key, request)
    assert result.provenance["device"].startswith("ray ")
    assert_same_result(result, pipeline.run_analysis(request))


@pytest.mark.slow
def test_a_study_on_ray_computes_its_sweeps_on_the_cluster(ray_address, tmp_path):
    """`coherence study --ray-address … --dynamics … --sweep …`: every sweep point is a
    cluster result, under the key the dashboard's panels look up."""
    from coherence.dashboard import sweeps
    from coherence.dashboard.selection import default_selection
    from coherence.dashboard.workspace_scan import scan_workspace
    from coherence.study import plan_study, run_study
    from tests.test_study import make_dataset, spec

    root = tmp_path / "ws"
    make_dataset(root)
    chosen = spec(epochs=2, dynamics_archs=("vit",), sweep_archs=("vit",), sweep_dampings=(1e-2,))
    run_study(plan_study(chosen, root), log=lambda _: None, executor=RayExecutor(ray_address))
    catalog = scan_workspace(root)
    selection = default_selection(catalog)
    runner = JobRunner(root)
    dynamics, _ = sweeps.dynamics_points(root, selection, runner)
    sensitivity, _ = sweeps.sensitivity_points(root, selection, runner, dampings=(1e-2,))
    points = dynamics + sensitivity
    # epoch 1 and the main analysis (epoch 2 = ekfac-krylov at the selection's λ 1e-4, in
    # both sweeps), ekfac-krylov at 1e-2, euclidean
    assert len({p.key for p in points}) == 4, [(p.series, p.x, p.key[:8]) for p in points]
    for point in points:
        result = runner.result(point.key, point.request)
        assert result is not None, (point.series, point.x)
        assert result.provenance["device"].startswith("ray "), (point.series, point.x)


def test_a_training_seed_on_ray_is_the_local_checkpoint(ray_address, tiny_dataset, tmp_path):
    with torch_threads(1):  # the worker's thread count: the same reductions, the same bits
        args = tiny_args(seed=7, epochs=2)
        local = train(tiny_dataset, tmp_path / "local" / "unet_s7", args)
        # trained for one epoch here, resumed to two on the cluster: the set travels both ways
        resumed = tmp_path / "cluster" / "unet_s7"
        train(tiny_dataset, resumed, tiny_args(seed=7, epochs=1))
    fresh = tmp_path / "cluster" / "unet_s7_fresh"
    seen, said = [], []
    RayExecutor(ray_address).train(
        [
            TrainRun(tiny_dataset, fresh, args, progress=lambda *event: seen.append(event)),
            TrainRun(tiny_dataset, resumed, args),
        ],
        log=said.append,
    )
    assert seen and seen[-1][:3] == (1, 2, 1.0)  # the last epoch, complete
    # the worker's log lines reach the driver, with the driver's paths, not its own copies
    assert f"training unet_s7: resuming {resumed} after epoch 1 of 2" in said, said
    assert not any("coherence-train-" in line for line in said), said
    for out in (fresh, resumed):
        for name in (ckpt.WEIGHTS_FILE, ckpt.STATE_FILE, ckpt.CONFIG_FILE):
            assert (out / name).read_bytes() == (local / name).read_bytes(), (out, name)
        strip = [{k: v for k, v in e.items() if k != "seconds"} for e in ckpt.read_history(out)]
        assert strip == [
            {k: v for k, v in e.items() if k != "seconds"} for e in ckpt.read_history(local)
        ]
        ckpt.verify(out)  # the manifest matches the files written on the driver
        # the training snapshots travel back too: epoch 1 (fresh) or 2 (resumed) from the
        # worker, bit for bit the local run's
        kept = snapshots.list_snapshots(out)
        assert list(kept) == list(snapshots.list_snapshots(local)) == [1, 2], out
        for epoch, directory in kept.items():
            mine = snapshots.snapshot_dir(local, epoch) / ckpt.WEIGHTS_FILE
            assert (directory / ckpt.WEIGHTS_FILE).read_bytes() == mine.read_bytes()
            ckpt.verify(directory)
    assert json.loads((fresh / ckpt.CONFIG_FILE).read_text())["dataset"]["root"] == str(
        tiny_dataset
    )


def test_training_on_ray_into_a_folder_of_other_files_is_refused(
    ray_address, tiny_dataset, tmp_path
):
    """The local refusal of an --out folder holding other files (a dataset) held on Ray too:
    the driver wrote the worker's checkpoint in among them."""
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("mine")
    with pytest.raises(RequestError, match=r"the folder holds other files \(readme.txt\)"):
        RayExecutor(ray_address).train([TrainRun(tiny_dataset, folder, tiny_args())])
    assert [p.name for p in folder.iterdir()] == ["readme.txt"]


def test_training_on_ray_holds_the_checkpoint_lock_as_a_local_run_does(
    ray_address, tiny_dataset, tmp_path
):
    """A checkpoint a local `coherence train` is writing (it holds the lock) was trained
    over on Ray: the driver pruned its snapshots and wrote its own set (the review's item).
    One --out given twice is the same race within one driver."""
    out = tmp_path / "cluster" / "unet_s7"
    refused = pytest.raises(RequestError, match="another `coherence train` or study")
    with training_lock(out), refused:
        RayExecutor(ray_address).train([TrainRun(tiny_dataset, out, tiny_args())])
    assert not out.exists()
    twice = [TrainRun(tiny_dataset, out, tiny_args()), TrainRun(tiny_dataset, out, tiny_args())]
    with pytest.raises(RequestError, match="another `coherence train` or study"):
        RayExecutor(ray_address).train(twice)
    with training_lock(out):  # released by the refused driver
        pass


def test_runs_share_one_copy_of_their_data_and_unshipped_data_is_read_on_the_node(
    ray_address, tiny_dataset, tmp_path, monkeypatch
):
    """A study's seeds each put the dataset in the object store (N copies); data above the
    ship limit is read at the node's same path, checked against the driver's files."""
    import ray

    from coherence.executors.ray_tasks import SHIP_BYTES_ENV

    puts = []
    real_put = ray.put

    def counting_put(value, **options):
        puts.append(type(value).__name__)
        return real_put(value, **options)

    monkeypatch.setattr(ray, "put", counting_put)
    runs = [TrainRun(tiny_dataset, tmp_path / f"unet_s{s}", tiny_args(seed=s)) for s in (1, 2)]
    RayExecutor(ray_address).train(runs)
    assert puts == ["dict"]  # one copy of the files for both runs
    monkeypatch.setenv(SHIP_BYTES_ENV, "0")
    puts.clear()
    unshipped = TrainRun(tiny_dataset, tmp_path / "unet_s3", tiny_args(seed=3))
    RayExecutor(ray_address).train([unshipped])
    assert puts == []  # read on the node, which holds the driver's very files here
    for run in (*runs, unshipped):
        ckpt.verify(run.out)


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_exhausted_retries_name_the_unit(
    ray_address, checkpoint, tiny_dataset, workspace, tmp_path
):
    runner = JobRunner(workspace)
    hooks = tmp_path / "hooks"
    request = quick_request(checkpoint, tiny_dataset, trajectories=(0,))
    thread, outcome = in_thread(lambda: runner.run(request, executor=hooked(ray_address, hooks)))
    marker = hooks / f"{checkpoint.name}-t0.pid"
    (pid,) = wait_for(marker)
    os.kill(pid, signal.SIGKILL)  # the worker dies mid-unit
    thread.join(180)
    assert "result" in outcome, outcome.get("error")
    pids = wait_for(marker)
    assert len(pids) == 2 and pids[0] != pids[1]  # retried in a new worker process
    assert_same_result(outcome["result"], pipeline.run_analysis(request))

    # no retry left: the job fails with the unit named, and nothing of it is stored
    request = quick_request(checkpoint, tiny_dataset, trajectories=(1,))
    executor = hooked(ray_address, hooks, retries=0)
    thread, outcome = in_thread(lambda: runner.run(request, executor=executor))
    (pid,) = wait_for(hooks / f"{checkpoint.name}-t1.pid")
    os.kill(pid, signal.SIGKILL)
    thread.join(120)
    error = outcome.get("error")
    assert isinstance(error, ClusterError), outcome
    assert f"unit (checkpoint {checkpoint.name}, trajectory 1)" in str(error)
    assert "\n" not in str(error)
    key = request_key(request)
    assert runner.status(key).state == "failed"
    assert runner.store.get(key) is None
    assert runner.store.get_unit(unit_keys(request)[0][0]) is None


@pytest.mark.slow
def test_a_cluster_that_goes_down_mid_job_ends_the_command_with_the_fix(
    checkpoint, tiny_dataset, tmp_path
):
    """`ray stop` mid-unit ended `coherence analyze` with status 1 and no word of ours: Ray
    ends the driver itself when its node's object store goes, or (when the raylet goes
    first) our one line names the loss. Either way the command said beforehand what to do."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    env = {**os.environ, TEST_UNIT_DIR_ENV: str(hooks), TEST_UNIT_DELAY_ENV: "120"}
    with local_head(env) as address:
        command = [
            sys.executable, "-m", "coherence.cli", "analyze", "--ray-address", address,
            "--checkpoint", str(checkpoint), "--data", str(tiny_dataset),
            "--classes", "CE-RP,CE-CRP", "--window", "0:2", "--trajectories", "0",
            "--out", str(tmp_path / "r.npz"), "--workspace", str(tmp_path / "ws"), "--yes",
        ]  # fmt: skip
        analyze = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        wait_for(hooks / f"{checkpoint.name}-t0.pid")  # the unit runs: now the cluster goes
    try:
        _, err = analyze.communicate(timeout=120)
    finally:
        analyze.kill()
    said = " ".join(err.split())
    assert f"computing on the Ray cluster at {address}" in said, err
    assert "rerun it to resume from the cached units" in said
    assert analyze.returncode in (1, 2), err
    assert "Traceback" not in err  # not a crash of ours, in either case
    if analyze.returncode == 2:  # the raylet went first: our line, not a retry count
        assert "error: the Ray cluster went away while computing" in said, err
        assert "retries" not in said
    else:  # Ray ended the driver (its own log line, if any, is the last): none of ours
        assert "error:" not in said, err
    assert not (tmp_path / "r.npz").exists()


@pytest.mark.slow
def test_cancel_cancels_the_cluster_tasks(
    ray_address, checkpoint, tiny_dataset, workspace, tmp_path
):
    runner = JobRunner(workspace)
    hooks = tmp_path / "hooks"
    request = quick_request(checkpoint, tiny_dataset, trajectories=(0, 1))
    key = request_key(request)
    thread, outcome = in_thread(lambda: runner.run(request, executor=hooked(ray_address, hooks)))
    pids = [wait_for(hooks / f"{checkpoint.name}-t{t}.pid")[0] for t in (0, 1)]
    status = runner.status(key)
    assert status.active and "0/2 units done on the Ray cluster" in status.stage
    cancelled_at = time.monotonic()
    assert runner.cancel(key)
    thread.join(60)
    assert isinstance(outcome.get("error"), JobCancelled), outcome
    assert time.monotonic() - cancelled_at < 15  # not the 120 s the units would sleep
    assert runner.status(key).state == "cancelled"
    deadline = time.monotonic() + 30
    alive = set(pids)
    while alive and time.monotonic() < deadline:  # ray.cancel(force=True) kills the workers
        for pid in list(alive):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive.discard(pid)
        time.sleep(0.2)
    assert not alive, f"cluster workers {alive} still run the cancelled units"
    assert all(runner.store.get_unit(k) is None for row in unit_keys(request) for k in row)


@pytest.mark.slow
def test_a_worker_of_another_version_is_refused(ray_address, checkpoint, tiny_dataset, tmp_path):
    """A driver (its own process) ships another coherence to its workers (Ray's py_modules):
    every reply is refused, naming both versions. Its working directory is empty because Ray
    puts the driver's working directory first on the workers' sys.path."""
    other = tmp_path / "other" / "coherence"
    shutil.copytree(REPO / "coherence", other, ignore=shutil.ignore_patterns("__pycache__"))
    init = other / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', '__version__ = "9.9.9"'))
    request = quick_request(checkpoint, tiny_dataset)
    script = (
        "import json, sys, ray\n"
        f"ray.init(address={ray_address!r}, runtime_env={{'py_modules': [{str(other)!r}]}},"
        " log_to_driver=False, logging_level='ERROR')\n"
        "from coherence.analysis.request import AnalysisRequest\n"
        "from coherence.executors.ray_cluster import RayExecutor\n"
        "request = AnalysisRequest.from_dict(json.loads(sys.argv[1]))\n"
        "try:\n"
        f"    RayExecutor({ray_address!r}).run_analysis(request)\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    empty = tmp_path / "cwd"
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(request.to_dict())],
        capture_output=True,
        text=True,
        cwd=empty,
        env={**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"},
        timeout=240,
    )
    out = done.stdout.strip()
    assert out.startswith("VersionMismatch"), out + done.stderr[-2000:]
    assert "coherence '9.9.9'" in out and "coherence '0.1.0'" in out, out
    assert f"unit (checkpoint {checkpoint.name}, trajectory 0)" in out


@pytest.mark.slow
def test_a_driver_with_a_ray_token_at_hand_connects_to_a_token_auth_head(tmp_path):
    """`ray start` turns token authentication on when ~/.ray/auth_token exists (a local
    `ray.init()` writes one), but `ray.init(address=…)` in a driver does not: every Ray test
    here then failed as "did not answer within 10 s". connect() does what `ray start` does."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("f" * 64)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(home)
    with local_head(env) as address:
        script = (
            "import os\n"
            "from coherence.executors.ray_connect import connect\n"
            f"ray = connect({address!r}, timeout=60)\n"
            "print(os.environ['RAY_AUTH_MODE'], ray.cluster_resources()['CPU'])\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env={**env, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"},
            timeout=120,
        )
    assert done.stdout.split() == ["token", "2.0"], done.stdout + done.stderr[-2000:]


@pytest.mark.slow  # 9 s or more on 2 cores: in make test, not test-fast
def test_an_unreachable_address_is_refused_in_seconds(checkpoint, tiny_dataset, tmp_path):
    """Refused in seconds when there is something to compute; a request the cache serves
    needs no cluster (it was refused too)."""
    port = free_port()  # nothing listens there
    started = time.monotonic()
    done = _analyze_via(f"127.0.0.1:{port}", checkpoint, tiny_dataset, tmp_path)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    message = " ".join(done.stderr.split())
    assert f"error: cannot reach the Ray cluster at 127.0.0.1:{port}" in message
    assert "Traceback" not in done.stderr
    assert elapsed < 60  # interpreter and torch start-up included; Ray itself would hang
    assert not (tmp_path / "r.npz").exists()
    here = _analyze_via(None, checkpoint, tiny_dataset, tmp_path)  # computed here: cached
    assert here.returncode == 0, here.stderr
    (tmp_path / "r.npz").unlink()
    again = _analyze_via(f"127.0.0.1:{port}", checkpoint, tiny_dataset, tmp_path)
    assert again.returncode == 0, again.stderr
    said = " ".join(again.stderr.split())
    assert "cached result: served without computing" in said
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in said  # warned, not refused
    assert "not needed: the result is in the cache" in said
    assert (tmp_path / "r.npz").exists()


def _analyze_via(address, checkpoint, tiny_dataset, tmp_path) -> subprocess.CompletedProcess:
    """`coherence analyze` of a small request in a subprocess, on ``address`` (None: here)."""
    via = ["--ray-address", address] if address else []
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "coherence.cli",
            "analyze",
            *via,
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(tiny_dataset),
            "--classes",
            "CE-RP,CE-CRP",
            "--window",
            "0:2",
            "--out",
            str(tmp_path / "r.npz"),
            "--workspace",
            str(tmp_path / "ws"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "COHERENCE_RAY_TIMEOUT": "5"},
        timeout=120,
    )


def _connect_elsewhere(address: str, timeout: float, first: tuple[str, ...] = ()) -> list[str]:
    """``connect(address)`` in a process of its own (this one may hold the session's cluster),
    after connecting to each of ``first``: the error's type, the seconds it took, and its
    message, as words."""
    script = (
        "import time\n"
        "from coherence.executors.ray_connect import connect\n"
        + "".join(f"connect({earlier!r}, timeout=30)\n" for earlier in first)
        + "started = time.monotonic()\n"
        "try:\n"
        f"    connect({address!r}, timeout={timeout})\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, round(time.monotonic() - started), error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"},
        timeout=120,
    )
    words = done.stdout.split()
    assert words[:1] == ["ClusterUnreachable"], done.stdout + done.stderr[-2000:]
    return words


def test_an_address_that_is_no_address_is_told_its_form():
    """'garbage' was answered with `ray start --head` there, as if a host had been named."""
    said = " ".join(_connect_elsewhere("garbage", 5))
    assert "write --ray-address / COHERENCE_RAY_ADDRESS as HOST:PORT" in said
    assert "ray start --head" not in said


def test_a_process_connected_to_one_cluster_refuses_another(ray_address):
    """connect() returned the process's first connection whatever address it was asked for,
    so work meant for one cluster ran on another in silence. The same address twice is the
    same connection, however spelled (localhost for 127.0.0.1)."""
    other = f"127.0.0.1:{free_port()}"
    spelled = ray_address.replace("127.0.0.1", "localhost")
    said = " ".join(_connect_elsewhere(other, 5, first=(ray_address, ray_address, spelled)))
    assert f"already connected to the Ray cluster at {ray_address}, not {other}" in said


def test_a_port_that_is_not_ray_times_out():
    """Something listens but never speaks Ray: connect gives up after its timeout."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        words = _connect_elsewhere(f"127.0.0.1:{server.getsockname()[1]}", 2)
    assert int(words[1]) <= 4 and "did not answer within 2 s" in " ".join(words)


def test_without_an_address_the_local_executor_runs_and_ray_is_not_imported(monkeypatch):
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    assert isinstance(get_executor(), LocalExecutor)
    assert isinstance(get_executor("127.0.0.1:1"), RayExecutor)
    monkeypatch.setenv(ADDRESS_ENV, "10.0.0.1:6379")
    assert get_executor().address == "10.0.0.1:6379"
    script = (
        "import sys\n"
        "import coherence.cache.jobs, coherence.cache.worker, coherence.executors.local\n"
        "from coherence.executors import get_executor\n"
        "get_executor()\n"
        "print('ray' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != ADDRESS_ENV}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.stdout.strip() == "False", done.stderr
