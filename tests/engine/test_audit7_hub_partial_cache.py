"""A hub repo only partly in the local cache (its config.json and tokenizer fetched by
AutoConfig/AutoTokenizer, never its weights) was taken as the model: offline the run was refused
as a directory 'with neither model.safetensors nor ...' under the cache's snapshot path, no word
of the hub; online the weights were never downloaded at all, the same refusal. Now a partial
snapshot counts as not cached: online the run downloads the rest, offline the one line says
which files the cache lacks and that HF_HUB_OFFLINE=1 forbids fetching them."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from kdengine.cli import main
from kdengine.config import RunConfig
from kdengine.sources import check_sources


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import offline_hub, put_in_hub_cache, write_tiny_inputs

    made = write_tiny_inputs(tmp_path / "src")
    cache = tmp_path / "hf-home" / "hub"
    student = Path(made["student"])
    put_in_hub_cache(cache, "kd/teacher", Path(made["teacher"]))
    put_in_hub_cache(cache, "kd/partial", [student / "config.json", student / "tokenizer.json",
                                            student / "tokenizer_config.json"])
    offline_hub(monkeypatch, cache, tmp_path / "hf-home")
    return made


def test_a_partly_cached_repo_offline_is_refused_naming_what_the_cache_lacks(
        hub: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    code = main(["train", "--teacher", "kd/teacher", "--student", "kd/partial", "--data",
                 hub["data"], "--run-dir", str(run_dir), "--batch-size", "4", "--seq-len", "32",
                 "--steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == ("kdengine train: error: --student: kd/partial is only partly in the local "
                      "hub cache (no model.safetensors or model.safetensors.index.json) and "
                      "HF_HUB_OFFLINE=1 forbids downloading the rest (download it first, or "
                      "unset HF_HUB_OFFLINE)"), err[0]
    assert not run_dir.exists()


def test_a_partly_cached_repo_online_is_left_for_the_run_to_download(
        hub: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    dirs = check_sources(RunConfig(teacher="kd/teacher", student="kd/partial",
                                   data=hub["data"]))
    assert "student" not in dirs  # downloaded by the run, checked when it loads
    assert dirs["teacher"].name == hashlib.sha1(b"kd/teacher").hexdigest()
