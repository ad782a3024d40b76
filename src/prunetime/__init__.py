"""prunetime: how much training does a pruned neural network need?

The library behind the Snakemake workflow: data, models, training, pruning methods,
bounds, analysis and reporting. Importable and testable without Snakemake.
"""

__version__ = "0.1.0"
