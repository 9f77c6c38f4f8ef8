"""Engine profiles: how kdtui launches and watches engines other than kdengine.

A profile declares the other engine's CLI (so flags cannot drift), maps kdengine.config fields
onto it (so no value is silently dropped), and parses its log lines into kdengine-protocol events
(so the same dashboard shows its runs). `apr` is aprender's `apr distill`.
"""

PROFILES = ("kdengine", "apr")
