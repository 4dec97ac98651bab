"""Training faults and reproducibility: resume after a kill, MLflow down, same result twice, deterministic mode."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from faultkit.storage import flip_a_tensor_byte  # benchmarks/ is on the path (pyproject.toml)
from helpers import REPO
from helpers import run_log as logged
from mlflow.tracking import MlflowClient
from PIL import Image

from burrscope.models.tensors import load_images
from burrscope.params import Params
from burrscope.tables import CHECKPOINT, HEATMAPS
from burrscope.tracking.fold_run import FoldRun
from burrscope.tracking.store import TrackingUnavailable
from burrscope.training.fold import train_fold
from burrscope.training.outputs import fold_metrics
from burrscope.training.resume import fingerprint, load_sealed
from burrscope.training.setup import configure_determinism
from stages import train as train_stage

OUTPUTS = ("model.pt", "metrics.json", "history.csv", "predictions.csv")
TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "DVC_EXP_NAME")
PHASES = {"startup", "data", "train", "eval", "logging", "checkpoint"}
THREE_FOLDS = {"split": {"folds": 3, "fold_ids": [0, 1, 2]}}
Notch = tuple[Path, pd.DataFrame]


@pytest.fixture(scope="module")
def three_folds(tiny_params: Callable[..., Params]) -> Callable[..., Params]:
    """tiny_params for the notch images' 3 folds."""
    return lambda **changes: tiny_params(**THREE_FOLDS, **changes)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("keep", ["last", "best"])
def test_a_fold_interrupted_after_epoch_k_resumes_to_the_uninterrupted_result(
    notch: Notch, three_folds: Callable[..., Params], tmp_path: Path, keep: str
) -> None:
    images, folds = notch
    recipe = three_folds(epochs=3, train={"keep": keep}).recipe
    reference = train_fold(images, folds, 1, recipe)

    checkpoint = tmp_path / "fold_1" / CHECKPOINT

    def crash_after_epoch_2(epoch: int, _: dict) -> None:
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_fold(images, folds, 1, recipe, on_epoch=crash_after_epoch_2, checkpoint=checkpoint)
    saved = load_sealed(checkpoint, "cpu")  # plain tensors and containers only (weights_only)
    assert saved["epoch"] == 2 and len(saved["history"]) == 2
    assert (saved["best"] is not None) == (keep == "best")

    seen: list[int] = []
    resumed = train_fold(images, folds, 1, recipe, on_epoch=lambda e, _: seen.append(e), checkpoint=checkpoint)
    assert seen == [1, 2, 3]  # the two replayed epochs, then the one trained
    assert resumed.resumed_from == 2 and reference.resumed_from == 0
    assert torch.equal(resumed.probabilities, reference.probabilities)
    assert resumed.history == reference.history
    assert resumed.epoch_kept == reference.epoch_kept
    assert_same_weights(resumed.state_dict, reference.state_dict)
    assert fold_metrics(resumed, recipe) == fold_metrics(reference, recipe)


def test_a_checkpoint_made_from_other_params_or_images_is_ignored(
    notch: Notch, three_folds: Callable[..., Params], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images_dir, folds = notch
    recipe = three_folds().recipe
    checkpoint = tmp_path / CHECKPOINT
    train_fold(images_dir, folds, 0, recipe, checkpoint=checkpoint)
    made = load_sealed(checkpoint, "cpu")["fingerprint"]
    device = torch.device("cpu")
    images = [load_images(images_dir, list(folds["file"]))]
    assert fingerprint(recipe, folds, 0, device, images=images) != made  # other images
    assert fingerprint(recipe, folds, 1, device, images=images) != fingerprint(recipe, folds, 0, device, images=images)
    moved = folds.assign(fold=folds["fold"].replace({0: 1, 1: 0}))
    assert fingerprint(recipe, moved, 0, device, images=images) != fingerprint(recipe, folds, 0, device, images=images)

    capsys.readouterr()
    other = dataclasses.replace(recipe, lr=recipe.lr * 2)
    result = train_fold(images_dir, folds, 0, other, checkpoint=checkpoint)
    assert "made with other params, folds, images or code; training from the start" in capsys.readouterr().err
    assert result.resumed_from == 0
    assert load_sealed(checkpoint, "cpu")["fingerprint"] != made  # replaced by this run's own

    checkpoint.write_bytes(b"not a checkpoint")
    (tmp_path / f".{CHECKPOINT}.x1y2.tmp").write_bytes(b"left by a kill mid-save")
    result = train_fold(images_dir, folds, 0, recipe, checkpoint=checkpoint)
    assert f"warning: ignoring {checkpoint}: not a sealed file" in capsys.readouterr().err
    assert result.resumed_from == 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_checkpoint_corrupted_on_disk_is_named_in_a_warning_and_never_resumed(
    notch: Notch, three_folds: Callable[..., Params], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bytes changed inside a saved tensor still load (torch checks no checksum): the checkpoint's digest catches
    them, and the fold trains from the start to exactly the uninterrupted result."""
    images_dir, folds = notch
    recipe = three_folds(epochs=2).recipe
    reference = train_fold(images_dir, folds, 0, recipe)
    checkpoint = tmp_path / CHECKPOINT

    def crash_after_epoch_1(epoch: int, _: dict) -> None:
        if epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_fold(images_dir, folds, 0, recipe, on_epoch=crash_after_epoch_1, checkpoint=checkpoint)
    flip_a_tensor_byte(checkpoint)
    capsys.readouterr()
    result = train_fold(images_dir, folds, 0, recipe, checkpoint=checkpoint)
    assert f"warning: ignoring {checkpoint}: its bytes do not match the sha256" in capsys.readouterr().err
    assert result.resumed_from == 0
    assert torch.equal(result.probabilities, reference.probabilities)
    assert_same_weights(result.state_dict, reference.state_dict)


@pytest.fixture
def torch_determinism() -> Iterator[None]:
    """Restore torch's global determinism settings, and CUBLAS_WORKSPACE_CONFIG, after the test."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
    if saved[4] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


@pytest.mark.usefixtures("torch_determinism")
def test_train_deterministic_switches_torch_to_deterministic_kernels(
    notch: Notch, three_folds: Callable[..., Params], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    images, folds = notch
    recipe = three_folds(epochs=1, train={"deterministic": True}).recipe
    seen: list[tuple] = []

    def record(*_: object) -> None:
        seen.append(
            (
                torch.are_deterministic_algorithms_enabled(),
                torch.backends.cudnn.deterministic,
                torch.backends.cudnn.benchmark,
                os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            )
        )

    train_fold(images, folds, 0, recipe, on_epoch=record)
    assert seen == [(True, True, False, ":4096:8")]

    # configure_determinism(train.deterministic, train.cudnn_benchmark, device) only sets flags: no GPU needed.
    configure_determinism(False, True, torch.device("cuda"))
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert torch.backends.cudnn.benchmark  # autotuned, fastest kernels
    configure_determinism(False, False, torch.device("cuda"))
    assert not torch.backends.cudnn.benchmark  # only when asked for
    configure_determinism(False, True, torch.device("cpu"))
    assert not torch.backends.cudnn.benchmark
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    configure_determinism(True, True, torch.device("cuda"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # a user's own setting is kept
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "sqlite:///{tmp}/a_file/sub/mlflow.db"])
def test_unreachable_mlflow_fails_at_once_naming_the_uri(
    tmp_path: Path, three_folds: Callable[..., Params], monkeypatch: pytest.MonkeyPatch, uri: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("a file where a folder would have to be")
    (tmp_path / "folds.csv").write_text("file,label,fold\na.png,0,0\nb.png,1,1\n")
    uri = uri.format(tmp=tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = three_folds()
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable) as err:
        FoldRun(params, tmp_path / "folds.csv", 0)
    assert time.monotonic() - started < 15  # one try, not MLflow's minutes of retries
    message = str(err.value)
    assert "\n" not in message
    assert f"MLflow tracking at {uri} is unreachable" in message
    assert "MLFLOW_TRACKING_URI" in message


# --- The CLI, as DVC and Snakemake run it, in a tiny project of its own ---------------------------------------


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TRACKING_ENV}
    return env | {"PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0"}


def train_cmd(out: str, fold: int | str = 1) -> list[str]:
    return [sys.executable, "-m", "stages.train", "images", "folds.csv", str(fold), out]


@pytest.fixture(scope="module")
def project(
    module_folder: Callable[[str], Path],
    make_notch: Callable[..., pd.DataFrame],
    three_folds: Callable[..., Params],
) -> Path:
    """params.yaml, 24 tiny images in 3 folds, and one uninterrupted run of fold 1 in `ref/`."""
    root = module_folder("project")
    make_notch(root / "images", 24).to_csv(root / "folds.csv", index=False)
    # A checkpoint after every epoch, so that a kill can land between two of them however fast the machine is.
    params = three_folds(epochs=4, train={"checkpoint_every_s": 0})
    (root / "params.yaml").write_text(yaml.safe_dump(params.raw))
    done = subprocess.run(train_cmd("ref"), cwd=root, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return root


def read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def run_log(project: Path, out: str | Path) -> dict:
    """What the train stage recorded of its run in logs/ (seconds, MLflow's outcome, a resume)."""
    return logged(project, f"train/{Path(out).name}")


def assert_same_fold(a: Path, b: Path) -> None:
    for name in ("predictions.csv", "history.csv", "metrics.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    model_a, model_b = (torch.load(p / "model.pt", weights_only=True) for p in (a, b))
    assert_same_weights(model_a.pop("state_dict"), model_b.pop("state_dict"))
    assert model_a == model_b


@pytest.mark.cli
def test_two_cli_runs_give_byte_identical_predictions_and_history(project: Path) -> None:
    done = subprocess.run(train_cmd("again"), cwd=project, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_same_fold(project / "ref", project / "again")
    assert run_log(project, "ref")["mlflow"] == "ok"
    assert sorted(p.name for p in (project / "ref").iterdir()) == sorted(OUTPUTS)  # the checkpoint is removed
    timing = run_log(project, "ref")["timing"]
    assert set(timing) == PHASES and all(seconds > 0 for seconds in timing.values())
    assert timing["startup"] > 1  # Python starting and importing torch and MLflow


@pytest.mark.cli
def test_cli_explain_shows_every_mistake_and_some_correct_images_of_every_fold_the_same_every_time(
    project: Path,
) -> None:
    # ref/ stands in for each of the three folds: the stage explains every fold_<k> of params' split.folds.
    for fold in range(3):
        shutil.copytree(project / "ref", project / "trained" / f"fold_{fold}", dirs_exist_ok=True)
    command = [sys.executable, "-m", "stages.explain", "images", "trained", "explain/all"]
    done = subprocess.run(command, cwd=project, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [line.split(" heatmaps of ")[1] for line in done.stdout.splitlines() if line.startswith("explain: ")] == [
        f"fold {fold} -> explain/all/fold_{fold}" for fold in range(3)
    ]
    out = project / "explain" / "all"
    assert sorted(p.name for p in out.iterdir()) == ["fold_0", "fold_1", "fold_2"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    predictions = pd.read_csv(project / "ref" / "predictions.csv", dtype={"label": str, "predicted": str})
    wrong = set(predictions.loc[predictions["label"] != predictions["predicted"], "file"])
    for fold in range(3):
        heatmaps = pd.read_csv(out / f"fold_{fold}" / HEATMAPS, dtype={"label": str})
        assert wrong <= set(heatmaps["file"])
        assert heatmaps["correct"].sum() == min(params["train"]["explain_correct"], len(predictions) - len(wrong))
        assert sorted(p.name for p in (out / f"fold_{fold}").iterdir()) == sorted([HEATMAPS, *heatmaps["heatmap"]])
        for name in heatmaps["heatmap"]:  # overlays on the model input, at its size
            with Image.open(out / f"fold_{fold}" / name) as overlay:
                assert overlay.size == (params["resize"]["img_size"],) * 2

    # The stage again: the same files, byte for byte.
    rerun = [*command[:-1], "explain/again"]
    done = subprocess.run(rerun, cwd=project, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    again = project / "explain" / "again"
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.*")} == {
        p.relative_to(again): p.read_bytes() for p in again.rglob("*.*")
    }


@pytest.mark.cli
def test_cli_explain_with_a_fold_not_trained_is_one_line_and_writes_nothing(project: Path) -> None:
    shutil.copytree(project / "ref", project / "half" / "fold_0", dirs_exist_ok=True)  # folds 1 and 2 missing
    command = [sys.executable, "-m", "stages.explain", "images", "half", "explain/none"]
    done = subprocess.run(command, cwd=project, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: half/fold_1/model.pt: cannot load model checkpoint")
    assert not (project / "explain" / "none").exists()  # not even fold 0's heatmaps
    assert not [p.name for p in (project / "explain").glob(".none.*")]


@pytest.mark.cli
def test_cli_all_trains_the_final_model_on_every_image_and_logs_it(project: Path) -> None:
    done = subprocess.run(
        train_cmd("final", "all"), cwd=project, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    out = project / "final"
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "metrics.json", "model.pt"]
    metrics = read_metrics(out)
    assert metrics["fold"] == "all" and metrics["n_train"] == 24 and metrics["n_val"] == 0
    assert metrics["epoch_kept"] == 4 and metrics["val_loss"] is None and run_log(project, out)["mlflow"] == "ok"
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("burrscope").experiment_id
    (run,) = client.search_runs([experiment], "tags.fold = 'final'")
    assert run.info.status == "FINISHED" and run.data.params["fold"] == "final"
    # The epoch is each value's step, not a metric; no validation scores without a validation set.
    assert {name for name in run.data.metrics if not name.startswith("system/")} == {"train_loss", "train_accuracy"}


@pytest.mark.cli
def test_a_fold_killed_mid_training_resumes_on_rerun_to_the_same_result(project: Path) -> None:
    out = project / "killed"
    checkpoint = out / CHECKPOINT
    proc = subprocess.Popen(
        train_cmd("killed"), cwd=project, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()  # SIGKILL; nothing if it has already finished, which the assertion below reports
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the fold finished before it could be killed"
    epoch = load_sealed(checkpoint, "cpu")["epoch"]
    assert 1 <= epoch < 4
    assert not any((out / name).exists() for name in OUTPUTS)  # nothing DVC or Snakemake would take as done

    done = subprocess.run(train_cmd("killed"), cwd=project, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming from killed/{CHECKPOINT} after epoch {epoch}/4" in done.stdout
    assert f"fold 1 epoch {epoch}/4" not in done.stdout  # the epochs before the kill were not trained again
    assert_same_fold(project / "ref", out)
    assert run_log(project, out)["resumed_from_epoch"] == epoch
    assert not checkpoint.exists() and not list(out.glob(".*.tmp"))
    # The killed attempt's MLflow run is closed as KILLED, not left RUNNING forever.
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("burrscope").experiment_id
    statuses = [r.info.status for r in client.search_runs([experiment], "tags.fold = '1'")]
    assert "RUNNING" not in statuses and "KILLED" in statuses


@pytest.mark.cli
def test_cli_with_unreachable_mlflow_stops_before_training_with_one_line(project: Path) -> None:
    env = cli_env() | {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    done = subprocess.run(train_cmd("unreachable"), cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: MLflow tracking at http://127.0.0.1:9 is unreachable"), done.stderr
    assert "unset it to track into sqlite:///" in lines[-1]
    assert "Traceback" not in done.stderr and "epoch" not in done.stdout
    assert not (project / "unreachable").exists()


@pytest.mark.cli
@pytest.mark.parametrize("when", ["epoch", "artifacts"])
def test_mlflow_failing_after_the_start_never_costs_the_fold(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], when: str
) -> None:
    """The store answers at the start, then breaks: outputs are written all the same, and say what failed."""
    monkeypatch.chdir(project)
    for name in TRACKING_ENV:
        monkeypatch.delenv(name, raising=False)
    log_batch = MlflowClient.log_batch

    def log_batch_breaking_on_metrics(self: MlflowClient, run_id: str, metrics=(), **kwargs: object) -> None:
        if metrics:
            raise ConnectionError("tracking server went away")
        log_batch(self, run_id, metrics=metrics, **kwargs)

    def log_artifact_breaking(*_: object, **__: object) -> None:
        raise ConnectionError("artifact store full")

    if when == "epoch":
        monkeypatch.setattr(MlflowClient, "log_batch", log_batch_breaking_on_metrics)
    else:
        monkeypatch.setattr(MlflowClient, "log_artifact", log_artifact_breaking)
    out = f"mlflow_down_{when}"
    monkeypatch.setattr(sys, "argv", ["train", "images", "folds.csv", "1", out])
    train_stage.main()  # returns normally: exit status 0, so DVC and Snakemake keep the outputs

    assert all((project / out / name).is_file() for name in OUTPUTS)
    assert not (project / out / CHECKPOINT).exists()
    status = run_log(project, out)["mlflow"]
    expected = "failed: logging epoch 1: ConnectionError" if when == "epoch" else "failed: logging artifacts"
    assert status.startswith(expected), status
    assert capsys.readouterr().err.count("warning: MLflow failed") == 1


def test_model_files_load_with_weights_only_and_nothing_evals() -> None:
    """Every torch.load in the code passes weights_only=True; nothing calls eval or exec (params included)."""
    loads = 0
    for path in sorted([*(REPO / "stages").glob("*.py"), *(REPO / "burrscope").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            assert not (isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec")), f"{path}:{node.lineno}"
            if isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                called = ast.unparse(node.func)
                if called not in ("torch.load", "yaml.load", "pickle.load"):
                    continue
                loads += 1
                assert called == "torch.load", f"{path}:{node.lineno}: use yaml.safe_load"
                safe = [k for k in node.keywords if k.arg == "weights_only" and ast.unparse(k.value) == "True"]
                assert safe, f"{path}:{node.lineno}: torch.load without weights_only=True"
    assert loads >= 3  # the backbones' weights, the training checkpoint and the fold models
