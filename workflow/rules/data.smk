# Data stages: names, alpha, squares, folds.


rule normalise:
    message:
        "Copying raw images under normalised names and joining the labels"
    input:
        **inputs("normalise"),
    output:
        **outputs("normalise"),
    params:
        tracked=tracked("normalise"),
    threads: workflow.cores  # the stage spreads its images over every core
    log:
        "logs/normalise.log",
    shell:
        command("normalise")


rule composite:
    message:
        "Compositing transparent cut-outs onto the background colour"
    input:
        **inputs("composite"),
    output:
        **outputs("composite"),
    params:
        tracked=tracked("composite"),
    threads: workflow.cores
    log:
        "logs/composite.log",
    shell:
        command("composite")


rule resize:
    message:
        "Padding to squares and resizing to the model input size"
    input:
        **inputs("resize"),
    output:
        **outputs("resize"),
    params:
        tracked=tracked("resize"),
    threads: workflow.cores
    log:
        "logs/resize.log",
    shell:
        command("resize")


rule split:
    message:
        "Assigning stratified folds"
    input:
        **inputs("split"),
    output:
        **outputs("split"),
    params:
        tracked=tracked("split"),
    log:
        "logs/split.log",
    shell:
        command("split")
