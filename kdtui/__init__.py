"""kdtui: a terminal dashboard for knowledge-distillation runs. Importing it loads no torch."""

__version__ = "0.1.0"
