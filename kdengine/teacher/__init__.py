"""What the KD term compares against when the teacher is not run live: a cache of its top-K
(or sampled) log-probs per token of the run's rows, written once by `kdengine cache-teacher`
(writer.py, cache.py) and read by `kdengine train --teacher-cache DIR` (provider.py, the sparse
loss in sparse.py, the rows in rows.py, the refusals in checks.py). docs/teacher-cache.md."""
