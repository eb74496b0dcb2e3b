"""Cache keys of a request are the same whether it was built from names or from enums."""

from __future__ import annotations

from coherence.analysis.vocabulary import CGStart, Device, Estimator, Response
from coherence.cache.keys import request_key, unit_keys
from tests.fixtures import quick_request


def test_keys_from_names_equal_keys_from_enums(checkpoint, tiny_dataset):
    names = quick_request(
        checkpoint, tiny_dataset, estimator="cg", rtol=0.1, cg_start="cold", responses=("smse",)
    )
    enums = quick_request(
        checkpoint,
        tiny_dataset,
        estimator=Estimator.CG,
        rtol=0.1,
        cg_start=CGStart.COLD,
        responses=(Response.SMSE,),
        device=Device.CPU,
    )
    assert request_key(names) == request_key(enums)
    assert unit_keys(names) == unit_keys(enums)


def test_a_revised_estimator_gets_new_keys_and_the_others_keep_theirs(
    checkpoint, tiny_dataset, monkeypatch
):
    """ekfac-krylov's, cg's, ekfac's and krylov's numbers changed (keys.ESTIMATOR_REVISIONS): their
    entries must miss, through the request key and the unit keys alike, while every other
    estimator's keys are the ones its requests always hashed to (as without any revision
    table)."""
    from coherence.cache import keys

    requests = {
        e: quick_request(checkpoint, tiny_dataset, estimator=e)
        for e in ("ekfac-krylov", "subspace", "krylov", "ekfac", "euclidean")
    }
    requests["cg"] = quick_request(checkpoint, tiny_dataset, estimator="cg", rtol=0.05)
    now = {e: (request_key(r), unit_keys(r)) for e, r in requests.items()}
    monkeypatch.setattr(keys, "ESTIMATOR_REVISIONS", {})
    before = {e: (request_key(r), unit_keys(r)) for e, r in requests.items()}
    for estimator in requests:
        revised = estimator in ("ekfac-krylov", "cg", "ekfac", "krylov")
        assert (now[estimator][0] != before[estimator][0]) is revised, estimator
        assert (now[estimator][1] != before[estimator][1]) is revised, estimator


def test_tf32_results_have_their_own_keys(checkpoint, tiny_dataset, monkeypatch):
    """COHERENCE_TF32=1 (TF32 products on a GPU) must not serve or overwrite IEEE entries;
    unset or 0, the keys are the ones requests always had."""
    request = quick_request(checkpoint, tiny_dataset)
    monkeypatch.delenv("COHERENCE_TF32", raising=False)
    ieee = request_key(request), unit_keys(request)
    monkeypatch.setenv("COHERENCE_TF32", "0")
    assert (request_key(request), unit_keys(request)) == ieee
    monkeypatch.setenv("COHERENCE_TF32", "1")
    tf32 = request_key(request), unit_keys(request)
    assert tf32[0] != ieee[0]
    flat = [{key for row in keys for key in row} for keys in (tf32[1], ieee[1])]
    assert not flat[0] & flat[1]
