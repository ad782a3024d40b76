# Helpers of the report rules (report.smk, pretrain.smk).


def report_item(path, category, subcategory, caption, kind, what):
    """A report() output with the project's category / subcategory / labels scheme."""
    return report(
        path,
        category=category,
        subcategory=subcategory,
        caption=f"../report/{caption}.rst",
        labels={"type": kind, "shows": what},
    )


def summary_inputs(wildcards):
    """The reports of every study this config runs (pretrain.smk defines HAS_PRETRAIN)."""
    studies = {}
    if ARCHS:
        studies["bounds"] = list(rules.report.output)
    if HAS_PRETRAIN:
        studies["pretrain"] = list(rules.pretrain_report.output)
    if HAS_GATES:
        studies["gates"] = list(rules.gates_report.output) + [rules.gates_summary.output.metrics]
    return studies
