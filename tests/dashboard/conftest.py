"""A small real workspace for the dashboard tests: Well datasets from the real solvers,
trained checkpoints, and the default analysis already in the cache (as `coherence demo`
leaves the demo workspace; tests.fixtures.build_workspace says what it holds).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import build_workspace


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("dashboard") / "workspace")
