"""harness: the experiment — CLI, run plans, measurement protocol, analysis, results store."""

__version__ = "0.1.0"
