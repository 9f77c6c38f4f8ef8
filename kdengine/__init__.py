"""kdengine: knowledge distillation of causal language models, with a structured event stream.

Importing the package loads no torch; `kdengine.config`, `kdengine.events` and
`kdengine.verdict` never do, so the dashboard can use them on a machine without torch.
"""

__version__ = "0.1.0"
