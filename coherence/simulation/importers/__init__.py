"""Importers for public datasets (PDEgym, The Well's euler_multi_quadrants) into our Well layout.

One module per source format; ``common`` holds what they share (container sniffing, physics
checks, split plans, block streaming into staged Well files). See DATA_IMPORT.md in the spec.
"""
