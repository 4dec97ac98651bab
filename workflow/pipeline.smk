# Rules mirror the stages of dvc.yaml one to one. Each lists its stage module and the helpers it imports
# as inputs, because Snakemake does not reliably track edits to the code a shell command runs.
import shutil
from functools import reduce
from operator import getitem

FOLDS = config["split"]["fold_ids"]
COMMON_CODE = ["stages/errors.py", "stages/files.py", "stages/params.py", "stages/params.schema.json"]
TRAINING_KEYS = ["seed", "model", "finetune", "pretrained", "lr", "epochs", "batch_size", "resize.img_size",
                 "composite.background", "train", "mlflow.experiment"]
# explain.py names heatmaps as normalise.py names files.
TRAINING_CODE = ["stages/train.py", "stages/models.py", "stages/explain.py", "stages/normalise.py", "stages/imageops.py",
                 "stages/tracking.py", "stages/classes.py", "stages/tables.py", *COMMON_CODE]
# `predict.final: [all]` adds the final model, trained on every image (dvc.yaml: a foreach over the same list).
FINAL = config["predict"]["final"]
# Folds share one GPU one at a time (profiles/default caps `gpu` at 1); CPU-only folds run side by side.
GPU = 1 if config["train"]["device"] != "cpu" and shutil.which("nvidia-smi") else 0


def tracked(*keys):
    """The params.yaml values a stage reads, so Snakemake reruns it when they change, as DVC does."""
    return {key: reduce(getitem, key.split("."), config) for key in keys}


def fold_outputs(fold):
    return [f"results/train/fold_{fold}/{name}" for name in ("model.pt", "predictions.csv", "heatmaps",
                                                             "metrics.json", "history.csv")]


# What sits in results/train, which the stages after training depend on as a whole (as DVC sees that folder).
TRAIN_OUTPUTS = [path for fold in FOLDS for path in fold_outputs(fold)]
TRAIN_OUTPUTS += [f"results/train/final/{name}" for name in ("model.pt", "metrics.json", "history.csv") if FINAL]


wildcard_constraints:
    fold=r"\d+",


rule normalise:
    message: "Copying raw images under normalised names and joining the labels"
    input:
        raw=config["data"]["raw_dir"],
        labels=config["data"]["labels"],
        code=["stages/normalise.py", "stages/imageops.py", *COMMON_CODE],
    output:
        images=directory("data/interim/named"),
        manifest="data/interim/manifest.csv",
    params:
        tracked=tracked("data.on_bad_image", "data.classes"),
    threads: workflow.cores  # the stage spreads its images over every core
    log:
        "logs/normalise.log",
    shell:
        "python -m stages.normalise {input.raw} {input.labels} {output.images} {output.manifest} 2>&1 | tee {log}"


rule composite:
    message: "Compositing transparent cut-outs onto the background colour"
    input:
        images="data/interim/named",
        code=["stages/composite.py", "stages/imageops.py", *COMMON_CODE],
    output:
        images=directory("data/interim/composited"),
    params:
        tracked=tracked("composite.background"),
    threads: workflow.cores  # the stage spreads its images over every core
    log:
        "logs/composite.log",
    shell:
        "python -m stages.composite {input.images} {output.images} 2>&1 | tee {log}"


rule resize:
    message: "Padding to squares and resizing to the model input size"
    input:
        images="data/interim/composited",
        code=["stages/resize.py", "stages/imageops.py", *COMMON_CODE],
    output:
        images=directory("data/processed/images"),
    params:
        tracked=tracked("composite.background", "resize.img_size"),
    threads: workflow.cores  # the stage spreads its images over every core
    log:
        "logs/resize.log",
    shell:
        "python -m stages.resize {input.images} {output.images} 2>&1 | tee {log}"


rule split:
    message: "Assigning stratified folds"
    input:
        manifest="data/interim/manifest.csv",
        code=["stages/split.py", "stages/classes.py", "stages/imageops.py", *COMMON_CODE],
    output:
        folds="data/processed/folds.csv",
    params:
        tracked=tracked("seed", "split.folds"),
    log:
        "logs/split.log",
    shell:
        "python -m stages.split {input.manifest} {output.folds} 2>&1 | tee {log}"


rule train:
    message: "Training fold {wildcards.fold}"
    input:
        images="data/processed/images",
        folds="data/processed/folds.csv",
        code=TRAINING_CODE,
    output:
        model="results/train/fold_{fold}/model.pt",
        predictions="results/train/fold_{fold}/predictions.csv",
        heatmaps=directory("results/train/fold_{fold}/heatmaps"),
        metrics="results/train/fold_{fold}/metrics.json",
        history="results/train/fold_{fold}/history.csv",
    params:
        tracked=tracked(*TRAINING_KEYS),
    threads: max(1, workflow.cores // len(FOLDS))
    resources:
        gpu=GPU,
    log:
        "logs/train_{fold}.log",
    shell:
        "python -m stages.train {input.images} {input.folds} {wildcards.fold} results/train/fold_{wildcards.fold}"
        " 2>&1 | tee {log}"


rule final:
    message: "Training the final model on every image"
    input:
        images="data/processed/images",
        folds="data/processed/folds.csv",
        code=TRAINING_CODE,
    output:
        model="results/train/final/model.pt",
        metrics="results/train/final/metrics.json",
        history="results/train/final/history.csv",
    params:
        tracked=tracked(*TRAINING_KEYS),
    threads: workflow.cores
    resources:
        gpu=GPU,
    log:
        "logs/final.log",
    shell:
        "python -m stages.train {input.images} {input.folds} all results/train/final 2>&1 | tee {log}"


rule aggregate:
    message: "Pooling out-of-fold predictions into cross-validated metrics"
    input:
        folds="data/processed/folds.csv",
        train=TRAIN_OUTPUTS,
        code=["stages/aggregate.py", "stages/tracking.py", "stages/classes.py", "stages/tables.py", *COMMON_CODE],
    output:
        predictions="results/aggregate/predictions.csv",
        metrics="results/aggregate/metrics.json",
        confusion="results/aggregate/confusion.csv",
        roc="results/aggregate/roc.csv",
        thresholds="results/aggregate/thresholds.csv",
        calibration="results/aggregate/calibration.csv",
    params:
        tracked=tracked(*TRAINING_KEYS, "split.folds", "predict.threshold"),
    log:
        "logs/aggregate.log",
    shell:
        "python -m stages.aggregate {input.folds} results/train results/aggregate 2>&1 | tee {log}"


rule report:
    message: "Writing reports/report.html"
    input:
        manifest="data/interim/manifest.csv",
        images="data/processed/images",
        train=TRAIN_OUTPUTS,
        aggregate=rules.aggregate.output,
        code=["stages/report.py", "stages/report_template.html", "stages/classes.py", "stages/imageops.py",
              "stages/tables.py", *COMMON_CODE],
    output:
        report="reports/report.html",
    params:
        tracked=tracked("seed", "model", "finetune", "pretrained", "lr", "epochs", "batch_size", "data", "composite",
                        "resize", "split", "train", "predict", "mlflow"),
    log:
        "logs/report.log",
    shell:
        "python -m stages.report {input.manifest} {input.images} results/train results/aggregate {output.report}"
        " 2>&1 | tee {log}"


rule export:
    message: "Exporting the chosen model to TorchScript and ONNX, and registering it in MLflow"
    input:
        folds="data/processed/folds.csv",
        images="data/processed/images",
        train=TRAIN_OUTPUTS,
        code=["stages/export.py", "stages/predict.py", *TRAINING_CODE],
    output:
        torchscript="results/export/model.ts",
        onnx="results/export/model.onnx",
        summary="results/export/export.json",
    params:
        tracked=tracked(*(key for key in TRAINING_KEYS if key != "mlflow.experiment"), "split.folds", "predict",
                        "mlflow"),
    log:
        "logs/export.log",
    shell:
        "python -m stages.export {input.folds} {input.images} results/train results/export 2>&1 | tee {log}"
