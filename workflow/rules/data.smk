# Data stages: names, alpha, squares, folds.


rule normalise:
    input:
        **inputs("normalise"),
    output:
        **outputs("normalise"),
    log:
        "logs/normalise.log",
    conda:
        "../envs/burrscope.yaml"
    threads: all_cores()  # the stage spreads its images over every core
    params:
        tracked=tracked("normalise"),
    message:
        "Copying raw images under normalised names and joining the labels"
    shell:
        command("normalise")


rule composite:
    input:
        **inputs("composite"),
    output:
        **outputs("composite"),
    log:
        "logs/composite.log",
    conda:
        "../envs/burrscope.yaml"
    threads: all_cores()
    params:
        tracked=tracked("composite"),
    message:
        "Compositing transparent cut-outs onto the background colour"
    shell:
        command("composite")


rule resize:
    input:
        **inputs("resize"),
    output:
        **outputs("resize"),
    log:
        "logs/resize.log",
    conda:
        "../envs/burrscope.yaml"
    threads: all_cores()
    params:
        tracked=tracked("resize"),
    message:
        "Padding to squares and resizing to the model input size"
    shell:
        command("resize")


rule split:
    input:
        **inputs("split"),
    output:
        **outputs("split"),
    log:
        "logs/split.log",
    conda:
        "../envs/burrscope.yaml"
    params:
        tracked=tracked("split"),
    message:
        "Assigning stratified folds"
    shell:
        command("split")
