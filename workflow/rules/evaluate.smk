# After training: heatmaps per fold, pooled metrics, the report and the exported model.


rule explain:
    message:
        "Grad-CAM heatmaps of fold {wildcards.fold}"
    input:
        images="data/processed/images",
        model="results/train/fold_{fold}/model.pt",
        predictions="results/train/fold_{fold}/predictions.csv",
        code=code("explain"),
    output:
        heatmaps=directory("results/explain/fold_{fold}"),
    params:
        tracked=tracked("seed", "train.explain_correct"),
    log:
        "logs/explain_{fold}.log",
    shell:
        "python -m stages.explain {input.images} results/train/fold_{wildcards.fold} {output.heatmaps} 2>&1 | tee {log}"


rule aggregate:
    message:
        "Pooling out-of-fold predictions into cross-validated metrics"
    input:
        folds="data/processed/folds.csv",
        train=TRAIN_OUTPUTS,
        code=code("aggregate"),
    output:
        predictions="results/aggregate/predictions.csv",
        metrics="results/aggregate/metrics.json",
        headline="results/aggregate/headline.json",
        confusion="results/aggregate/confusion.csv",
        roc="results/aggregate/roc.csv",
        thresholds="results/aggregate/thresholds.csv",
        calibration="results/aggregate/calibration.csv",
        history="results/aggregate/history.csv",
    params:
        tracked=tracked(*TRAINING_KEYS.values(), "split.folds", "predict.threshold"),
    log:
        "logs/aggregate.log",
    shell:
        "python -m stages.aggregate {input.folds} results/train results/aggregate 2>&1 | tee {log}"


rule report:
    message:
        "Writing reports/report.html"
    input:
        manifest="data/interim/manifest.csv",
        images="data/processed/images",
        train=TRAIN_OUTPUTS,
        explain=EXPLAIN_OUTPUTS,
        aggregate=rules.aggregate.output,
        code=code("report"),
    output:
        report="reports/report.html",
    params:
        tracked=tracked("seed", "model", "finetune", "pretrained", "lr", "epochs", "batch_size", "data", "composite",
                        "resize", "split", "train", "predict", "mlflow"),
    log:
        "logs/report.log",
    shell:
        "python -m stages.report {input.manifest} {input.images} results/train results/explain results/aggregate"
        " {output.report} 2>&1 | tee {log}"


rule export:
    message:
        "Exporting the chosen model to TorchScript and ONNX, and registering it in MLflow"
    input:
        folds="data/processed/folds.csv",
        images="data/processed/images",
        train=TRAIN_OUTPUTS,
        code=code("export"),
    output:
        torchscript="results/export/model.ts",
        onnx="results/export/model.onnx",
        summary="results/export/export.json",
    params:
        tracked=tracked(*TRAINING_KEYS.values(), "split.folds", "predict", "mlflow.registered_model"),
    log:
        "logs/export.log",
    shell:
        "python -m stages.export {input.folds} {input.images} results/train results/export 2>&1 | tee {log}"
