"""PDE solvers, initial-condition classes and The Well HDF5 datasets (stage 1: simulate).

The contracts of ARCHITECTURE.md live in their modules (``euler.evolve``,
``navier_stokes.evolve``, the Well format in ``wellformat``: its schema and validator in
``wellschema``, its writer in ``wellwriter``; generation in ``generate``); the names a user
reaches for are exported here, loaded on first use (PEP 562) so importing stays light.
"""

from __future__ import annotations

from coherence.lazy import lazy_exports

_EXPORTS = {
    "DatasetInfo": "coherence.simulation.dataset",
    "SimulationRequest": "coherence.simulation.dataset",
    "generate_dataset": "coherence.simulation.generate",
    "open_dataset": "coherence.simulation.dataset",
    "read_well_file": "coherence.simulation.wellformat",
    "write_well_file": "coherence.simulation.wellformat",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
