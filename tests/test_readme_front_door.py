"""The README's install as a new user on a Linux machine without a GPU meets it: PyPI's torch
for Linux is the CUDA build (several GB of NVIDIA wheels), so the README must give the CPU one."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"


def _bash_blocks(text: str) -> list[str]:
    return [b.replace("\\\n", " ") for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_readme_gives_the_try_command_with_the_cpu_torch_index_for_a_machine_without_a_gpu():
    text = (REPO / "README.md").read_text()
    try_command = text.split("<!-- try-command -->", 1)[1].split("```bash\n", 1)[1].split("\n")[0]
    install = try_command.split(" && ")[1]
    cpu = [" ".join(b.split()) for b in _bash_blocks(text) if CPU_INDEX in b]
    assert cpu, "README gives no install with PyTorch's CPU index"
    # the same install and demo as the Try-it command, with the CPU index added
    assert any(install in c and c.endswith(".venv/bin/kdtui launch --demo") for c in cpu), cpu
    assert "torch==2.13.0" in (REPO / "constraints.txt").read_text()  # matches 2.13.0+cpu
