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
