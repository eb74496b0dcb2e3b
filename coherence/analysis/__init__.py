"""Influence estimators, observables, summaries and figure builders (stage 3: analyze).

Never imports streamlit. The contracts of ARCHITECTURE.md:
``influence_matrix(model, inputs, targets, *, response, estimator, damping, rtol)`` and
``standardize(H)``; the request vocabulary (``Estimator``, ``Response``, ``CGStart``,
``Device``) and ``InfluenceOptions``, the checked options of one influence computation.
Exports load lazily (PEP 562), so the figure builders and summaries can be imported without
paying for torch.
"""

from __future__ import annotations

from coherence.lazy import lazy_exports

_EXPORTS = {
    "AnalysisRequest": "coherence.analysis.request",
    "InfluenceOptions": "coherence.analysis.request",
    "AnalysisResult": "coherence.analysis.results",
    "UnitResult": "coherence.analysis.results",
    "load_result": "coherence.analysis.results",
    "save_result": "coherence.analysis.results",
    "run_analysis": "coherence.analysis.pipeline",
    "CGStart": "coherence.analysis.vocabulary",
    "Device": "coherence.analysis.vocabulary",
    "Estimator": "coherence.analysis.vocabulary",
    "InfluenceDiagnostics": "coherence.analysis.diagnostics",
    "InfluenceResult": "coherence.analysis.diagnostics",
    "compute_influence": "coherence.analysis.influence",
    "influence_matrix": "coherence.analysis.influence",
    "top_eigenvalue": "coherence.analysis.influence",
    "Response": "coherence.analysis.vocabulary",
    "standardize": "coherence.analysis.standardization",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
