"""Burrscope pipeline stages: each module runs as `python -m stages.<name>`."""
