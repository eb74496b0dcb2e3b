"""Influence estimators, observables, summaries and figure builders (stage 3: analyze).

Never imports streamlit. The contracts of ARCHITECTURE.md:
``influence_matrix(model, inputs, targets, *, response, estimator, damping, rtol)`` and
``standardize(H)``.
"""

from coherence.analysis.estimators import Estimator
from coherence.analysis.influence import (
    InfluenceDiagnostics,
    InfluenceResult,
    compute_influence,
    influence_matrix,
    top_eigenvalue,
)
from coherence.analysis.observables import Response
from coherence.analysis.standardize import standardize

__all__ = [
    "Estimator",
    "InfluenceDiagnostics",
    "InfluenceResult",
    "Response",
    "compute_influence",
    "influence_matrix",
    "standardize",
    "top_eigenvalue",
]
