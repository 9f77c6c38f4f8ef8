"""The `apr` profile: aprender's `apr distill` run on a GPU host and watched from its log lines.

schema.py declares its CLI and maps kdengine.config onto it; parser.py turns its log lines into
kdengine-protocol events; stages.py dispatches it over SSH; watch.py follows it.
"""
