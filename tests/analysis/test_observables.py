"""Residual observables r_A (METHOD.md §4) against hand-computed values and loop references."""

from __future__ import annotations

import pytest
import torch

from coherence.analysis.observables import (
    Response,
    parse_response,
    parse_responses,
    residual,
)
from coherence.errors import RequestError
from tests.analysis.fixtures import euler_states, reference_residual

pytestmark = pytest.mark.usefixtures("single_thread")


def test_smse_residual_matches_loop_reference(generator):
    x, y = euler_states(3, 5, generator)
    prediction = y + 0.2 * torch.randn(y.shape, generator=generator, dtype=y.dtype)
    got = residual(Response.SMSE, prediction, x, y)
    torch.testing.assert_close(
        got, reference_residual("smse", prediction, x, y), rtol=1e-14, atol=0
    )


def test_smse_scale_uses_the_target_rms_per_example_and_channel():
    y = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    y[0, 0] = 3.0  # RMS 3
    y[1, 1] = torch.tensor([[4.0, -4.0], [4.0, -4.0]])  # RMS 4
    prediction = y + 1.0
    got = residual(Response.SMSE, prediction, y, y)
    assert float(got[0, 0, 0, 0]) == pytest.approx(1 / (3 + 1e-6), rel=1e-15)
    assert float(got[1, 1, 0, 0]) == pytest.approx(1 / (4 + 1e-6), rel=1e-15)
    assert float(got[0, 1, 0, 0]) == pytest.approx(1 / 1e-6, rel=1e-12)  # zero target: ε only


@pytest.mark.parametrize(("response", "channel"), [("mass", 0), ("energy", 3)])
def test_conservation_residual_is_relative_change_on_its_channel(generator, response, channel):
    x, y = euler_states(2, 4, generator)
    prediction = x.clone()
    prediction[:, channel] *= 1.1  # 10 % more mass/energy than the input
    got = residual(Response(response), prediction, x, y)
    total = x[:, channel].sum(dim=(-2, -1))
    expected_value = 0.1 * total / (total + 1e-6)
    torch.testing.assert_close(
        got[:, channel], expected_value[:, None, None].expand(2, 4, 4), rtol=1e-13, atol=0
    )
    others = [c for c in range(4) if c != channel]
    assert torch.count_nonzero(got[:, others]) == 0
    torch.testing.assert_close(
        got, reference_residual(response, prediction, x, y), rtol=1e-13, atol=0
    )


def test_conserving_prediction_has_zero_mass_residual(generator):
    x, y = euler_states(2, 4, generator)
    prediction = torch.roll(x, shifts=(1, 2), dims=(-2, -1))  # same sums, different field
    got = residual(Response.MASS, prediction, x, y)
    torch.testing.assert_close(got, torch.zeros_like(got), rtol=0, atol=1e-15)


def test_residual_is_a_constant_cotangent(generator):
    x, y = euler_states(2, 4, generator)
    prediction = x.clone().requires_grad_(True)
    for r in Response:
        assert not residual(r, prediction * 2, x, y).requires_grad


def test_conservation_needs_euler_channels():
    x = torch.ones(2, 2, 4, 4)
    with pytest.raises(RequestError) as info:
        residual(Response.ENERGY, x, x, x)
    message = str(info.value)
    assert "compressible-Euler" in message and "F=2" in message and "'smse'" in message


def test_parse_response_lists_allowed_values_and_dedupes():
    assert parse_response("mass") is Response.MASS
    assert parse_responses("smse") == (Response.SMSE,)
    assert parse_responses(["energy", "smse", "energy"]) == (Response.ENERGY, Response.SMSE)
    with pytest.raises(RequestError, match="'smse', 'mass', 'energy'"):
        parse_response("vorticity")
    with pytest.raises(RequestError, match="empty"):
        parse_responses([])
