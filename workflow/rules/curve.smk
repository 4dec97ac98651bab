# The learning curve (params curve.fractions): one job per fraction, each training every fold on that share of
# its photos, then the curve and its verdict. With curve.fractions: [] only the curve job runs, on the full run.


rule curve_point:
    input:
        **inputs("curve_point"),
    output:
        **outputs("curve_point"),
    log:
        "logs/curve_point_{fraction}.log",
    conda:
        "../envs/burrscope.yaml"
    threads: max(1, all_cores() // max(1, len(config["curve"]["fractions"])))
    resources:
        gpu=GPU,
    params:
        tracked=tracked("curve_point"),
    message:
        "Learning curve: every fold on {wildcards.fraction} of its training photos"
    shell:
        command("curve_point")


rule curve:
    input:
        **inputs("curve"),
    output:
        **outputs("curve"),
    log:
        "logs/curve.log",
    conda:
        "../envs/burrscope.yaml"
    params:
        tracked=tracked("curve"),
    message:
        "Learning curve: would more photos help?"
    shell:
        command("curve")
