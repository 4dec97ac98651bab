"""The TorchScript export: one traced model, copied for each model of the ensemble with its weights; reproducible.

The graph is traced from one model (its forward runs once, on a small example batch), never from the whole
ensemble: the others are copies of it that only take their own weights, and a scripted module averages their
probabilities. The same template and weights give the same archive byte for byte, in any process and checkout.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT, OUTPUT = "image", "probabilities"  # the exported files' input and output, as ONNX names them
UNREPRODUCIBLE_RECORDS = (".debug_pkl", "/.data/serialization_id", "/traced_inputs.pkl", "/traced_inputs/0")
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold, as torch's own archives use


class MeanOfModels(nn.Module):
    """The mean of its members' outputs, each member a model's probabilities: what the TorchScript file runs."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(images) for member in self.members]).mean(0)


@contextlib.contextmanager
def fresh_type_names() -> Iterator[torch._C.CompilationUnit]:
    """TorchScript types made inside get their names from a compilation unit of their own.

    TorchScript names each module type it makes after its class, numbered (`___torch_mangle_<n>`) when the process
    already made one of that name, and the archive keeps the names: the same model traced twice in one process
    would give two archives. Relies on torch's private `torch.jit._state._python_cu`, which scripting reads; torch
    is pinned (pyproject.toml) and tests/test_export.py checks two exports in one process are the same bytes.
    """
    from torch.jit import _state

    saved, _state._python_cu = _state._python_cu, torch._C.CompilationUnit()
    try:
        yield _state._python_cu
    finally:
        _state._python_cu = saved


def reproducible_archive(archive: bytes) -> bytes:
    """A TorchScript archive without what differs between two saves of the same model: the debug records
    (`*.debug_pkl`: Python stack traces that name this checkout's and this venv's files; torch.jit.load does without
    them), `.data/serialization_id`, which hashes them, and the traced example inputs (random numbers that nothing
    reads back). The rest is copied in order, stored, dated 1980."""
    source, rebuilt = zipfile.ZipFile(io.BytesIO(archive)), io.BytesIO()
    with zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_STORED) as target:
        for record in source.infolist():
            if not record.filename.endswith(UNREPRODUCIBLE_RECORDS):
                target.writestr(zipfile.ZipInfo(record.filename, ZIP_EPOCH), source.read(record))
    return rebuilt.getvalue()


def saved(module: torch.jit.ScriptModule) -> bytes:
    archive = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.save` is deprecated")
        torch.jit.save(module, archive)
    return reproducible_archive(archive.getvalue())


def trace_template(member: nn.Module, example: torch.Tensor) -> bytes:
    """`member` (one model's probabilities) traced on `example`, as an archive: the graph every member copies."""
    with warnings.catch_warnings(), fresh_type_names() as types:
        # Mean and std are constants by design; TorchScript is deprecated but still what torch.jit.load serves.
        warnings.filterwarnings("ignore", "torch.tensor results are registered as constants")
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace(_method)?` is deprecated")
        # check_trace re-traces and compares graphs, 20 times slower than tracing; the parity check compares outputs.
        return saved(torch.jit.trace(member.eval(), example, check_trace=False, _compilation_unit=types))


def load_torchscript(source: Path | str | bytes) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated")
        stream = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        return torch.jit.load(stream, map_location="cpu").eval()


def compose_torchscript(template: bytes, weights: Sequence[Mapping[str, torch.Tensor]]) -> bytes:
    """The archive of MeanOfModels over copies of the template, each with one state dict of `weights` (keyed as the
    template's own); raises RuntimeError if a state dict does not fit the template."""
    base = load_torchscript(template)
    members = []
    for state in weights:
        member = copy.deepcopy(base)
        member.load_state_dict(state)  # strict: every parameter and buffer, with the template's shapes
        members.append(member)
    with warnings.catch_warnings(), fresh_type_names():
        warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated")
        return saved(torch.jit.script(MeanOfModels(members)))


@torch.inference_mode()
def run_torchscript(path: Path, images: torch.Tensor) -> np.ndarray:
    return load_torchscript(path)(images).numpy()
