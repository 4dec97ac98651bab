# After training: heatmaps per fold, pooled metrics, the report and the exported model.


rule explain:
    message:
        "Grad-CAM heatmaps of fold {wildcards.fold}"
    input:
        **inputs("explain"),
    output:
        **outputs("explain"),
    params:
        tracked=tracked("explain"),
    log:
        "logs/explain_{fold}.log",
    shell:
        command("explain")


rule aggregate:
    message:
        "Pooling out-of-fold predictions into cross-validated metrics"
    input:
        **inputs("aggregate"),
    output:
        **outputs("aggregate"),
    params:
        tracked=tracked("aggregate"),
    log:
        "logs/aggregate.log",
    shell:
        command("aggregate")


rule report:
    message:
        "Writing reports/report.html"
    input:
        **inputs("report"),
    output:
        **outputs("report"),
    params:
        tracked=tracked("report"),
    log:
        "logs/report.log",
    shell:
        command("report")


rule export:
    message:
        "Exporting the chosen model to TorchScript and ONNX, and registering it in MLflow"
    input:
        **inputs("export"),
    output:
        **outputs("export"),
    params:
        tracked=tracked("export"),
    log:
        "logs/export.log",
    shell:
        command("export")
