# Training: one job per fold, and the optional final model on every image.


rule train:
    message:
        "Training fold {wildcards.fold}"
    input:
        **inputs("train"),
    output:
        **outputs("train"),
    params:
        tracked=tracked("train"),
    threads: max(1, workflow.cores // len(config["split"]["fold_ids"]))
    resources:
        gpu=GPU,
    log:
        "logs/train_{fold}.log",
    shell:
        command("train")


rule final:
    message:
        "Training the final model on every image"
    input:
        **inputs("final"),
    output:
        **outputs("final"),
    params:
        tracked=tracked("final"),
    threads: workflow.cores
    resources:
        gpu=GPU,
    log:
        "logs/final.log",
    shell:
        command("final")
