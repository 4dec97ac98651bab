"""The fault campaign's parts (benchmarks/faults.py runs them): commands run to the end or killed at a chosen moment
(procs), the workspaces they run in (lab), what a run leaves and how it compares with an uninterrupted one
(outcome), and the faults themselves (kills, storage, services)."""
