"""Compile the bytecode of every package the engine imports (as pip does when it installs
them), under PYTHONPYCACHEPREFIX when that is set; prints what it found and how long it took.

A GPU box's image may ship its packages without bytecode: then every Python process compiles
torch's sources afresh (py-spy put 7.3 s of a 19.1 s `kdengine train` start there, issue 16), a
cost a user whose pip compiled them at install never pays. benchmarks/gpu_env.sh runs this once,
before anything is timed.
"""

from __future__ import annotations

import compileall
import os
import sys
import sysconfig
import time
from pathlib import Path


def imported_packages() -> list[Path]:
    """Top-level package folders, outside the standard library, of what a training run imports
    (the compiler's modules included: they load at the first torch.compile)."""
    import torch._dynamo  # noqa: F401
    import torch._inductor.compile_fx  # noqa: F401

    import kdengine.run  # noqa: F401  (and the trainer, the models, the losses)

    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    roots: set[Path] = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or "site-packages" not in file and "dist-packages" not in file:
            continue
        path = Path(file).resolve()
        if stdlib in path.parents:
            continue
        top = module.__name__.split(".")[0]
        for parent in path.parents:
            if parent.name == top:
                roots.add(parent)
                break
    return sorted(roots)


def main() -> int:
    import torch

    had = (Path(torch.__file__).parent / "__pycache__").is_dir()
    print(f"bytecode: dont_write_bytecode={sys.flags.dont_write_bytecode} "
          f"pycache_prefix={sys.pycache_prefix} torch/__pycache__ present={had}")
    start = time.monotonic()
    roots = imported_packages()
    ok = all(compileall.compile_dir(str(root), quiet=2, workers=os.cpu_count() or 1)
             for root in roots)
    print(f"bytecode: {len(roots)} packages ({', '.join(r.name for r in roots)}) compiled in "
          f"{time.monotonic() - start:.1f} s{'' if ok else ' (some files failed)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
