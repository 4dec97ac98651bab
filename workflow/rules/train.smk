# Training: one job per fold, and the optional final model on every image.


rule train:
    input:
        **inputs("train"),
    output:
        **outputs("train"),
    log:
        "logs/train_{fold}.log",
    conda:
        "../envs/burrscope.yaml"
    threads: max(1, all_cores() // len(config["split"]["fold_ids"]))
    resources:
        gpu=GPU,
    params:
        tracked=tracked("train"),
    message:
        "Training fold {wildcards.fold}"
    shell:
        command("train")


rule final:
    input:
        **inputs("final"),
    output:
        **outputs("final"),
    log:
        "logs/final.log",
    conda:
        "../envs/burrscope.yaml"
    threads: all_cores()
    resources:
        gpu=GPU,
    params:
        tracked=tracked("final"),
    message:
        "Training the final model on every image"
    shell:
        command("final")
