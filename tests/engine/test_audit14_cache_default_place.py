"""An upgrade keeps the teacher caches an older kdengine wrote at their default place
(KDENGINE_CACHE/teacher/<key>, no --out): the key is now by the data's contents, the older one
was by its files' times, so the same `kdengine cache-teacher` command looked in a new folder and
scored everything again. It now finds the older cache (complete already), and where the files'
times changed since, says where that cache is instead of leaving two folders to find."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import write_chat_pair


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chat_pair(tmp_path_factory.mktemp("default-place"))[0]


def _job(teacher: Path, data: Path, *extra: str) -> list[str]:
    return ["cache-teacher", "--teacher", str(teacher), "--data", str(data), "--seq-len", "64",
            "--device", "cpu", "--dtype", "float32", "--top-k", "4", *extra]


def test_audit14_an_older_cache_at_the_default_place_is_complete_already(
        engine_in_process, teacher, tmp_path, monkeypatch) -> None:
    from kdengine.config import RunConfig
    from kdengine.data import ByteTokenizer
    from kdengine.teacher.cache import cache_key
    from kdengine.teacher.identity import legacy_data_identity

    root = tmp_path / "kdengine-cache"
    monkeypatch.setenv("KDENGINE_CACHE", str(root))
    data = tmp_path / "text"
    data.mkdir()
    for i in range(2):
        (data / f"doc{i}.txt").write_text("".join(f"line {i} {j} of the text\n"
                                                  for j in range(40)))
    done = engine_in_process(*_job(teacher, data))
    assert done.returncode == 0, done.stderr
    (written,) = (root / "teacher").iterdir()
    # as an older kdengine wrote it: the data known by its files' times, the key and the
    # default folder from that
    manifest = json.loads((written / "manifest.json").read_text())
    old = legacy_data_identity(RunConfig(data=str(data)), ByteTokenizer(), None)
    manifest["identity"]["data"] = manifest["data"]["identity"] = old
    manifest["key"] = cache_key(manifest["identity"])
    (written / "manifest.json").write_text(json.dumps(manifest))
    older = written.with_name(manifest["key"])
    written.rename(older)

    again = engine_in_process(*_job(teacher, data))
    assert again.returncode == 0, again.stderr
    assert f"teacher cache {older} is complete already" in again.stdout
    assert [p.name for p in (root / "teacher").iterdir()] == [older.name]  # no new folder
    check = engine_in_process(*_job(teacher, data, "--check"))
    assert check.returncode == 0, check.stderr
    said = json.loads(check.stdout)
    assert (said["run_dir"], said["complete"]) == (str(older), True)

    # the files' times changed: not provably the same data, so scored again elsewhere, and said
    st = (data / "doc0.txt").stat()
    os.utime(data / "doc0.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    check = engine_in_process(*_job(teacher, data, "--check"))
    assert check.returncode == 0, check.stderr
    said = json.loads(check.stdout)
    assert said["complete"] is False and said["run_dir"] != str(older)
    assert check.stderr.strip().splitlines() == [
        f"kdengine cache-teacher: an older kdengine's cache of this teacher and data, {older}, "
        f"is not used: it knew the data by its files' times, which changed since; scoring "
        f"again into {said['run_dir']} (remove {older} to free "
        f"{_human(manifest['bytes'])})"]


def _human(n: int) -> str:
    from kdengine.diskspace import human

    return human(n)
