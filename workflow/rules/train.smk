# Training: one job per fold, and the optional final model on every image.


rule train:
    message:
        "Training fold {wildcards.fold}"
    input:
        images="data/processed/images",
        folds="data/processed/folds.csv",
        code=code("train"),
    output:
        model="results/train/fold_{fold}/model.pt",
        predictions="results/train/fold_{fold}/predictions.csv",
        metrics="results/train/fold_{fold}/metrics.json",
        history="results/train/fold_{fold}/history.csv",
    params:
        tracked=tracked(*TRAINING_KEYS.values()),
    threads: max(1, workflow.cores // len(FOLDS))
    resources:
        gpu=GPU,
    log:
        "logs/train_{fold}.log",
    shell:
        "python -m stages.train {input.images} {input.folds} {wildcards.fold} results/train/fold_{wildcards.fold}"
        " 2>&1 | tee {log}"


rule final:
    message:
        "Training the final model on every image"
    input:
        images="data/processed/images",
        folds="data/processed/folds.csv",
        code=code("train"),
    output:
        model="results/train/final/model.pt",
        metrics="results/train/final/metrics.json",
        history="results/train/final/history.csv",
    params:
        tracked=tracked(*TRAINING_KEYS.values()),
    threads: workflow.cores
    resources:
        gpu=GPU,
    log:
        "logs/final.log",
    shell:
        "python -m stages.train {input.images} {input.folds} all results/train/final 2>&1 | tee {log}"
