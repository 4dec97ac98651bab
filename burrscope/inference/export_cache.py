"""The export's templates, cached on disk: a model's TorchScript and ONNX graphs, which do not depend on its weights.

Tracing a model and running torch.onnx's exporter on it is most of what a cold export costs; what they make depends
on the model's structure, never on its weights, so it is made once per structure and reused by every export whose
models only differ in their weights (another `lr`, other folds, other epochs). The key hashes everything the
templates are made from but the weights: the architecture and its library's version, the names, shapes and types
of the weights, the number of classes, the image size, the views, the normalisation, the code that makes them
(the export module and what it imports, by content), and the versions of torch and of the ONNX packages.

An entry is never trusted: its files must hash as its manifest says, must take exactly these models' weights, and
the files made from them pass the same parity check as any export's; an entry that fails any of it is rebuilt.
Entries live in <workspace>/.burrscope-cache/export/ (or $BURRSCOPE_CACHE/export), the few most recently used
kept; deleting them costs only time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from burrscope.files import atomic_dir, workspace_root
from burrscope.inference.ensemble import Ensemble
from burrscope.pipeline.codegraph import PROJECT_ROOT, code_files

CACHE_ENV = "BURRSCOPE_CACHE"  # the folder that burrscope.training.features caches the frozen features in too
KEPT = 4  # entries kept, the most recently used: one per model structure and code version in use is plenty
MANIFEST, TORCHSCRIPT_TEMPLATE, ONNX_TEMPLATE = "manifest.json", "template.ts", "template.onnx"
CODE_MODULE = "burrscope.inference.export"
PACKAGES = ("torch", "onnx", "onnxscript", "onnx-ir")  # torch.onnx's exporter, its graph library and its optimiser


@dataclass(frozen=True)
class Templates:
    """One model's graphs: a TorchScript archive (with some weights) and an ONNX model (with none)."""

    torchscript: bytes
    onnx: bytes


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or workspace_root() / ".burrscope-cache") / "export"


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed as a distribution"


def structure(ensemble: Ensemble, example_batch: int) -> dict[str, Any]:
    """What the templates of the ensemble's (alike) models are made from, but their weights."""
    model = ensemble.models[0]
    library = type(model).__module__.partition(".")[0]
    return {
        "model": ensemble.names[0],
        "library": [library, package_version(library)],
        "weights": [[name, list(tensor.shape), str(tensor.dtype)] for name, tensor in model.state_dict().items()],
        "classes": len(ensemble.classes),
        "img_size": ensemble.img_size,
        "views": [list(view) for view in ensemble.views],
        "normalisation": [list(ensemble.normalisation.mean), list(ensemble.normalisation.std)],
        "example_batch": example_batch,
        "packages": {name: package_version(name) for name in PACKAGES},
    }


def template_key(facts: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode())
    for name in code_files(PROJECT_ROOT, CODE_MODULE):
        digest.update(name.encode())
        digest.update((PROJECT_ROOT / name).read_bytes())
    return digest.hexdigest()


def load(key: str) -> tuple[Templates | None, str]:
    """The entry's templates if its files are whole, and what was found: `cached`, `none`, or what is wrong."""
    folder = cache_dir() / key
    if not folder.is_dir():
        return None, "none"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = {name: (folder / name).read_bytes() for name in (TORCHSCRIPT_TEMPLATE, ONNX_TEMPLATE)}
        whole = manifest["key"] == key and all(
            manifest["sha256"][name] == hashlib.sha256(data).hexdigest() for name, data in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"unreadable ({type(err).__name__}: {err})"
    if not whole:
        return None, "corrupted (its files do not hash as its manifest says)"
    (folder / MANIFEST).touch()  # the most recently used, for pruning
    return Templates(files[TORCHSCRIPT_TEMPLATE], files[ONNX_TEMPLATE]), "cached"


def store(key: str, templates: Templates, facts: dict[str, Any]) -> None:
    """Write the entry whole (or leave the cache as it was: it is only a shortcut), then prune old entries."""
    files = {TORCHSCRIPT_TEMPLATE: templates.torchscript, ONNX_TEMPLATE: templates.onnx}
    manifest = {"key": key, "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    try:
        with atomic_dir(cache_dir() / key) as tmp:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            (tmp / MANIFEST).write_text(json.dumps({**manifest, "made_from": facts}, indent=1), encoding="utf-8")
        entries = [p for p in cache_dir().iterdir() if p.is_dir() and not p.name.startswith(".")]
        entries.sort(key=lambda p: (p / MANIFEST).stat().st_mtime if (p / MANIFEST).exists() else 0, reverse=True)
        for old in entries[KEPT:]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as err:  # another export replacing the same entry, a full disk: the next export rebuilds
        print(f"warning: could not cache the export templates in {cache_dir()} ({err})", flush=True)


def discard(key: str) -> None:
    shutil.rmtree(cache_dir() / key, ignore_errors=True)
