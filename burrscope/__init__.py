"""Burrscope: transparent cut-out photos and a labels CSV in, a cross-validated burr classifier out.

The library behind the pipeline's stage commands (`python -m stages.<name>`); see docs/architecture.md.
"""
