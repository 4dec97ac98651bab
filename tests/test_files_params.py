"""Shared helpers: atomic writes, params validation and its typed sections, class ordering."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from burrscope.classes import class_order, prob_column
from burrscope.errors import OutOfSpace, user_errors
from burrscope.files import CorruptFile, atomic_dir, atomic_path, seal, sha256_file, unseal, write_text_atomic
from burrscope.params import TRAINING_KEYS, Augment, Params, ParamsError, Recipe, load_params, lookup, validate_params


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def merged_data(**changes: object) -> dict:
    """The repository's params with keys of its `data` section changed."""
    params = repo_params()
    params["data"] = params["data"] | changes
    return params


def test_atomic_path_replaces_target_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("killed midway")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_outputs_get_ordinary_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as folder:
            (folder / "f").write_text("y")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_atomic_dir_replaces_the_whole_folder_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "images"
    target.mkdir()
    (target / "stale.png").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as folder:
        (folder / "new.png").write_text("partial")
        raise KeyboardInterrupt
    assert [p.name for p in target.iterdir()] == ["stale.png"]
    with atomic_dir(target) as folder:
        (folder / "new.png").write_text("done")
    assert [p.name for p in target.iterdir()] == ["new.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_the_temps_a_killed_write_left_are_removed_by_the_next_write_of_its_target(tmp_path: Path) -> None:
    """A SIGKILL mid-write skips every cleanup: what it left must not outlive the rerun, nor count in DVC's hash of
    a folder that depends on it (results/train)."""
    (tmp_path / ".model.pt.k1ll3d.tmp").write_bytes(b"half a model")
    (tmp_path / ".images.k1ll3d.tmp").mkdir()
    (tmp_path / ".images.k1ll3d.tmp" / "a.png").write_bytes(b"half the images")
    (tmp_path / ".other.pt.k1ll3d.tmp").write_bytes(b"another target's, left alone")
    write_text_atomic(tmp_path / "model.pt", "whole")
    with atomic_dir(tmp_path / "images") as folder:
        (folder / "a.png").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.k1ll3d.tmp", "images", "model.pt"]


@pytest.mark.parametrize("how", ["OSError", "torch"])
def test_a_full_disk_is_one_error_naming_the_file_and_leaves_nothing(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    target = tmp_path / "results" / "model.pt"

    def write() -> None:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            if how == "OSError":
                raise full
            try:  # torch's C++ zip writer reports Python's OSError as a RuntimeError of its own
                raise full
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    with pytest.raises(OutOfSpace, match=f"^{target}: no space left on the device holding "):
        write()
    assert list(target.parent.iterdir()) == []
    with pytest.raises(SystemExit) as stopped, user_errors():
        write()
    assert str(stopped.value.code).startswith(f"error: {target}: no space left")
    assert str(stopped.value.code).endswith("Free some space and run the stage again")
    with pytest.raises(SystemExit) as stopped, user_errors(), atomic_dir(tmp_path / "images") as folder:
        (folder / "a.png").write_bytes(b"half")
        raise full
    assert "images: no space left" in str(stopped.value.code)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    with pytest.raises(SystemExit) as stopped, user_errors():  # a write outside the atomic helpers
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "logs/x.json")
    assert stopped.value.code == (
        "error: no space left on the device writing logs/x.json (No space left on device); free some space and run "
        "the stage again"
    )
    assert "Traceback" not in capsys.readouterr().err


def test_a_sealed_file_refuses_truncated_or_changed_bytes(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 4
    sealed = seal(payload)
    assert unseal(sealed, tmp_path / "x") == payload
    flipped = bytearray(sealed)
    flipped[len(sealed) // 2] ^= 1
    for broken, why in [(sealed[:-10], "do not match"), (bytes(flipped), "do not match"), (payload, "not a sealed")]:
        with pytest.raises(CorruptFile, match=why):
            unseal(broken, tmp_path / "x")


def test_sha256_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_repo_params_are_valid_and_lr_is_top_level() -> None:
    params = validate_params(repo_params())
    for key in ("lr", "epochs", "batch_size", "model", "seed"):
        assert key in params
    assert params["resize"]["img_size"] == 224
    assert "size" not in params["resize"]  # DVC's run-cache ignores a key named `size`


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": -1}, r"lr: -1 is less than or equal to the minimum"),
        ({"model": "vgg99"}, r"model: 'vgg99' does not match .*efficientnet_lite0\|mobilenet_v2"),
        ({"resize": {"img_size": 0}}, r"resize.img_size: 0 is less than the minimum"),
        ({"split": {"folds": 1, "fold_ids": [0]}}, r"split.folds: 1 is less than the minimum"),
        ({"split": {"folds": 3, "fold_ids": [0, 1, 2, 3, 4]}}, r"set fold_ids to \[0, 1, 2\]"),
        (
            {"train": {"device": "tpu", "keep": "last", "augment": {"flip": True, "rot90": True, "jitter": 0.1}}},
            r"train.device: 'tpu' is not one of",
        ),
        ({"typo_key": 1}, r"Additional properties are not allowed \('typo_key'"),
    ],
)
def test_bad_params_name_the_key(change: dict, message: str) -> None:
    params = repo_params() | change
    with pytest.raises(ParamsError, match=message):
        validate_params(params)


def test_load_params_reports_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found: run stages from the repository root"):
        load_params(tmp_path / "params.yaml")


def test_cuda_on_a_machine_without_a_gpu_stops_the_first_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = repo_params()
    params["train"]["device"] = "cuda"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr("burrscope.params.nvidia_driver_present", lambda: False)
    with pytest.raises(ParamsError, match=r"train\.device is `cuda` but this machine has no NVIDIA driver"):
        load_params(tmp_path / "params.yaml")
    monkeypatch.setattr("burrscope.params.nvidia_driver_present", lambda: True)
    assert load_params(tmp_path / "params.yaml").recipe.device == "cuda"


def test_params_sections_hold_the_values_of_params_yaml() -> None:
    params = Params.from_mapping(validate_params(repo_params()))
    assert params.raw == repo_params()
    assert (params.seed, params.img_size, params.folds) == (42, 224, 5)
    assert params.background == (0, 0, 0) and params.data.classes is None and params.data.on_bad_image == "error"
    assert params.data.class_names == (("0", "ok"), ("1", "burr"))
    assert params.predict.final == () and params.predict.threshold == 0.5
    assert params.mlflow.registered_model == "burrscope-burr-classifier"
    assert params.explain_correct == repo_params()["train"]["explain_correct"]
    assert params.recipe.augment == Augment(flip=True, rot90=True, jitter=0.1)


def test_class_names_name_labels_given_as_numbers_or_text_and_leave_others_as_they_are() -> None:
    for names in ({0: "ok", 1: "burr"}, {"0": "ok", "1": "burr"}):
        data = Params.from_mapping(validate_params(merged_data(class_names=names))).data
        assert [data.class_name(label) for label in ("0", "1", "2")] == ["ok", "burr", "2"]
    assert Params.from_mapping(validate_params(merged_data(class_names=None))).data.class_name("1") == "1"


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ({1: ""}, r"data.class_names.1: '' should be non-empty"),
        ({1: 7}, r"data.class_names.1: 7 is not of type 'string'"),
        (["ok", "burr"], r"data.class_names: \['ok', 'burr'\] is not of type 'object', 'null'"),
        ({0: "part", 1: "part"}, r"must give each label one name and each name to one label"),
        ({1: "burr", "1": "burr?"}, r"must give each label one name and each name to one label"),
    ],
)
def test_bad_class_names_are_refused_naming_the_key(names: object, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        validate_params(merged_data(class_names=names))


def test_the_recipe_is_every_training_key_and_round_trips_through_them() -> None:
    params = repo_params()
    recipe = Recipe.from_params(params)
    assert recipe.as_params() == {key: lookup(params, key) for key in TRAINING_KEYS.values()}
    assert list(recipe.as_params()) == list(TRAINING_KEYS.values())
    nested: dict = {}
    for dotted, value in recipe.as_params().items():
        *parents, last = dotted.split(".")
        target = nested
        for name in parents:
            target = target.setdefault(name, {})
        target[last] = value
    assert Recipe.from_params(nested) == recipe


def test_class_order_is_numeric_when_labels_are_integers() -> None:
    assert class_order(["1", "0", "10", "2", "1"]) == ["0", "1", "2", "10"]
    assert class_order(["no_burr", "burr"]) == ["burr", "no_burr"]
    assert prob_column("1") == "prob_1"
