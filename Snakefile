# The Burrscope pipeline under Snakemake: the same graph, commands and params.yaml as dvc.yaml
# (tests/test_graphs.py keeps them identical). Run: snakemake --cores 4
from snakemake.utils import validate


configfile: "params.yaml"


validate(config, "stages/params.schema.json")


include: "workflow/pipeline.smk"


rule all:
    input:
        "reports/report.html",
        "results/export/model.onnx",
