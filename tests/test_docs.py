"""What the newcomer's docs promise, checked: the getting-started walk-through runs as written,
the places it says things live are where they live, and the README's commands exist."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import REPO, TINY_TEXT, write_tiny_model  # noqa: E402

GUIDE = REPO / "docs" / "getting-started.md"


def _block(text: str, lang: str) -> str:
    match = re.search(rf"```{lang}\n(.*?)```", text, re.S)
    assert match, f"no ```{lang} block"
    return match.group(1)


def test_the_walkthroughs_run_toml_checks_and_runs_on_models_laid_out_as_it_says(tmp_path):
    # the layout of steps 1 and 2, with real tiny checkpoints; the run.toml of step 3 verbatim
    write_tiny_model(tmp_path / "models" / "teacher", hidden=32, layers=2, seed=1)
    write_tiny_model(tmp_path / "models" / "student", hidden=16, layers=1, seed=2)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text(TINY_TEXT[:30000])
    lines = [json.dumps({"text": TINY_TEXT[i:i + 3000]}) for i in range(30000, 60000, 3000)]
    (tmp_path / "data" / "more.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "run.toml").write_text(_block(GUIDE.read_text(), "toml"))
    engine = [sys.executable, "-m", "kdengine"]

    check = subprocess.run([*engine, "train", "--config", "run.toml", "--check"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr
    effective = json.loads(check.stdout)
    assert effective["config"]["run_name"] == "my-first-kd"
    assert not Path(effective["run_dir"]).exists()  # --check writes nothing

    # "flags given on the command line win over the file": a short run of the same config
    run = subprocess.run([*engine, "train", "--config", "run.toml", "--steps", "6",
                          "--warmup-steps", "0", "--eval-every", "3", "--seq-len", "64"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    run_dir = Path(os.environ["KDENGINE_RUNS_DIR"]) / "my-first-kd"
    assert (run_dir / "final" / "model.safetensors").exists()
    verdict = subprocess.run([*engine, "verdict", str(run_dir)], capture_output=True, text=True,
                             timeout=120)
    assert verdict.returncode in (0, 1), verdict.stdout  # a verdict, not inconclusive


def _table(text: str, heading: str) -> list[list[str]]:
    section = text.split(heading, 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


# how each row of "Where things live" is computed by the code that uses it
WHERE = {
    "runs": "from kdengine.config import default_runs_dir as f",
    "engine cache": "from kdengine.demo import cache_root as f",
    "dashboard settings": "from kdtui.settings import config_dir as g; f = lambda: g() / "
                          "'settings.json'",
    "SSH hosts'": "from kdtui.remote.hosts import hosts_file as f",
    "remote runs'": "from kdtui.remote.manifest import evidence_dir as f; "
                    "f = (lambda h: lambda: h() / 'RUN')(f)",
}


def test_where_things_live_is_where_the_code_puts_them(tmp_path):
    rows = _table(GUIDE.read_text(), "## Where things live")
    checked = 0
    for what, default, moved_by in rows:
        key = next((k for k in WHERE if what.startswith(k)), None)
        if key is None:
            continue
        expected = default.strip("`").replace("RUN_NAME", "").rstrip("/")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("KDENGINE_", "KDTUI_", "XDG_"))}
        env["HOME"] = str(tmp_path)
        code = f"{WHERE[key]}; print(f())"
        got = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == expected.replace("~", str(tmp_path)), what
        variable = re.search(r"`(K\w+)`", moved_by).group(1)
        env[variable] = str(tmp_path / "moved")
        moved = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO,
                               capture_output=True, text=True, timeout=60)
        assert moved.stdout.strip().startswith(str(tmp_path / "moved")), (what, variable)
        checked += 1
    assert checked == len(WHERE)


def test_readme_use_commands_are_real_subcommands_and_flags():
    text = (REPO / "README.md").read_text()
    use = text.split("## Use", 1)[1]
    block = _block(use, "bash")
    helps: dict[tuple[str, str], str] = {}
    for line in block.splitlines():
        words = line.split("#")[0].split()
        if len(words) < 2 or words[0] not in ("kdtui", "kdengine"):
            continue
        tool, sub = words[0], words[1]
        if sub.startswith("-"):
            sub = "launch"  # not reached: README's commands name their subcommand
        if (tool, sub) not in helps:
            got = subprocess.run([sys.executable, "-m", tool, sub, "--help"],
                                 capture_output=True, text=True, timeout=120, cwd=REPO)
            assert got.returncode == 0, (line, got.stderr)
            helps[tool, sub] = got.stdout
        for flag in (w.strip("[]") for w in words[2:] if w.strip("[]").startswith("--")):
            assert flag in helps[tool, sub], (line, flag)
    assert ("kdengine", "train") in helps and ("kdtui", "launch") in helps
