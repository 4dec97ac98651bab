# After training: every fold's heatmaps, pooled metrics, the data audit, the report and the exported model.


rule explain:
    input:
        **inputs("explain"),
    output:
        **outputs("explain"),
    log:
        "logs/explain.log",
    conda:
        "../envs/burrscope.yaml"
    params:
        tracked=tracked("explain"),
    message:
        "Grad-CAM heatmaps of every fold"
    shell:
        command("explain")


rule aggregate:
    input:
        **inputs("aggregate"),
    output:
        **outputs("aggregate"),
    log:
        "logs/aggregate.log",
    conda:
        "../envs/burrscope.yaml"
    params:
        tracked=tracked("aggregate"),
    message:
        "Pooling out-of-fold predictions into cross-validated metrics"
    shell:
        command("aggregate")


rule audit:
    input:
        **inputs("audit"),
    output:
        **outputs("audit"),
    log:
        "logs/audit.log",
    conda:
        "../envs/burrscope.yaml"
    params:
        tracked=tracked("audit"),
    message:
        "Auditing the labels and photos: probable label errors, near-duplicates, outliers"
    shell:
        command("audit")


rule report:
    input:
        **inputs("report"),
    output:
        **outputs("report"),
    log:
        "logs/report.log",
    conda:
        "../envs/burrscope.yaml"
    params:
        tracked=tracked("report"),
    message:
        "Writing reports/report.html"
    shell:
        command("report")


rule export:
    input:
        **inputs("export"),
    output:
        **outputs("export"),
    log:
        "logs/export.log",
    conda:
        "../envs/burrscope.yaml"
    params:
        tracked=tracked("export"),
    message:
        "Exporting the chosen model to TorchScript and ONNX, and registering it in MLflow"
    shell:
        command("export")
