# Entry point for `snakemake --cores 4` from the repository root. The workflow is in workflow/ (Snakemake's
# standard layout); what a bare `snakemake` builds is named here, because an included file's first rule
# never becomes the default target.
include: "workflow/Snakefile"


rule all:
    input:
        "reports/report.html",
        "results/export/model.onnx",
