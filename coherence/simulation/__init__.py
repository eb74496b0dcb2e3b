"""PDE solvers, initial-condition classes and The Well HDF5 datasets (stage 1: simulate)."""
