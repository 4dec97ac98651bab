# Data stages: names, alpha, squares, folds.


rule normalise:
    message:
        "Copying raw images under normalised names and joining the labels"
    input:
        raw=config["data"]["raw_dir"],
        labels=config["data"]["labels"],
        code=code("normalise"),
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
    message:
        "Compositing transparent cut-outs onto the background colour"
    input:
        images="data/interim/named",
        code=code("composite"),
    output:
        images=directory("data/interim/composited"),
    params:
        tracked=tracked("composite.background"),
    threads: workflow.cores
    log:
        "logs/composite.log",
    shell:
        "python -m stages.composite {input.images} {output.images} 2>&1 | tee {log}"


rule resize:
    message:
        "Padding to squares and resizing to the model input size"
    input:
        images="data/interim/composited",
        code=code("resize"),
    output:
        images=directory("data/processed/images"),
    params:
        tracked=tracked("composite.background", "resize.img_size"),
    threads: workflow.cores
    log:
        "logs/resize.log",
    shell:
        "python -m stages.resize {input.images} {output.images} 2>&1 | tee {log}"


rule split:
    message:
        "Assigning stratified folds"
    input:
        manifest="data/interim/manifest.csv",
        code=code("split"),
    output:
        folds="data/processed/folds.csv",
    params:
        tracked=tracked("seed", "split.folds"),
    log:
        "logs/split.log",
    shell:
        "python -m stages.split {input.manifest} {output.folds} 2>&1 | tee {log}"
