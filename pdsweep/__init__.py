"""pdsweep: pre-training distillation sweeps — a YAML design space → runs → MLflow → tables."""

__version__ = "0.1.0"
