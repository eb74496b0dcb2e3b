"""One definition of a dataset's files and their signature: a dataset stored as `.h5` (The
Well allows both suffixes) is found by every reader, and rewriting one of its files changes
every cached view of it (the analysis batches included, which used to glob `*.hdf5` only)."""

from __future__ import annotations

import os
import shutil

import numpy as np

from coherence.analysis.request import AnalysisRequest
from coherence.dashboard import loaders
from coherence.dashboard.workspace_scan import scan_signature
from coherence.simulation.dataset import dataset_files, open_dataset, stat_signature
from coherence.simulation.wellformat import read_well_file, write_well_file


def as_h5(source, target):
    """A copy of a dataset whose files end in .h5."""
    for path in dataset_files(source):
        out = target / path.relative_to(source).with_suffix(".h5")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out)
    return target


def test_h5_datasets_are_read_and_their_changes_seen_everywhere(workspace, tmp_path):
    data = as_h5(workspace / "datasets" / "tiny_ce", tmp_path / "ws" / "datasets" / "h5_ce")
    files = dataset_files(data, "test")
    assert files and all(p.suffix == ".h5" for p in files)
    info = open_dataset(data)
    assert set(info.files["test"]) == {"CE-RP", "CE-CRP", "CE-RPUI"}
    request = AnalysisRequest(
        checkpoints=("unused",), data=str(data), classes=("CE-RP", "CE-CRP"), n_steps=2
    )
    before = loaders.batch_inputs(request)
    signature = scan_signature(tmp_path / "ws")

    target = next(p for p in files if p.stem == "CE-RP")
    states, meta = read_well_file(target)
    states = states * 1.5
    target.unlink()
    write_well_file(
        tmp_path / "rewritten" / "CE-RP.hdf5",
        states,
        meta.times,
        family=meta.family,
        class_name=meta.class_name,
        dataset_name=meta.dataset_name,
    ).replace(target)
    after = loaders.batch_inputs(request)
    assert not np.array_equal(before, after)  # the cached batches noticed the .h5 rewrite
    assert scan_signature(tmp_path / "ws") != signature
    assert stat_signature(files) != stat_signature([])


def test_a_file_replaced_at_the_same_size_and_time_changes_its_signature(tmp_path):
    """Checkpoints are saved by a rename; one replaced within the clock's tick at the same size
    kept its (size, mtime) and the in-memory caches served the old one's reading."""
    path, staged = tmp_path / "model.safetensors", tmp_path / "staged"
    path.write_bytes(b"a" * 64)
    staged.write_bytes(b"b" * 64)
    os.utime(staged, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    before = stat_signature([path])
    staged.replace(path)
    assert path.stat().st_mtime_ns == before[0][2] and path.stat().st_size == before[0][1]
    assert stat_signature([path]) != before
    assert stat_signature([tmp_path / "absent"]) == ((str(tmp_path / "absent"), None, None, None),)
