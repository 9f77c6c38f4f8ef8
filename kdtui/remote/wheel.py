"""A wheel of exactly the kdengine (and kdtui) this process runs, for the remote sync stage.

It is built from the imported packages' own directories, not from a git commit, so the remote
runs the code you run here, uncommitted edits included. The zip is deterministic (sorted names,
fixed timestamps), so the same code always makes the same bytes, and its hash names the remote
venv: the sync stage is skipped when a venv for this hash is already there. Building takes
milliseconds and needs no setuptools, pip or network.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import kdengine

DIST = "kdtui"
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class WheelBuild:
    filename: str
    data: bytes
    sha256: str
    kdengine_version: str

    @property
    def build_id(self) -> str:
        """Names the remote venv: the engine version and 12 hex digits of the wheel's hash."""
        return f"kdengine-{self.kdengine_version}-{self.sha256[:12]}"

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.filename
        path.write_bytes(self.data)
        return path


def _package_files(package_dir: Path) -> list[tuple[str, Path]]:
    out = []
    root = package_dir.parent
    for path in sorted(package_dir.rglob("*")):
        if not path.is_file() or path.suffix in _SKIP_SUFFIXES:
            continue
        if _SKIP_DIRS.intersection(path.relative_to(root).parts):
            continue
        out.append((path.relative_to(root).as_posix(), path))
    return out


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_wheel() -> WheelBuild:
    """The wheel of the kdtui and kdengine packages as imported now."""
    # one distribution holds both packages and they share its version
    version = kdengine.__version__
    files: list[tuple[str, bytes]] = []
    # kdtui's dir from this file, not kdtui.__file__: an editable install can expose kdtui as
    # a namespace package, which has no __file__
    for package_dir in (Path(kdengine.__file__).resolve().parent,
                        Path(__file__).resolve().parents[1]):
        files += [(name, path.read_bytes()) for name, path in _package_files(package_dir)]
    info = f"{DIST}-{version}.dist-info"
    files.append((f"{info}/METADATA", (
        f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {version}\n"
        "Summary: kdtui + kdengine, built by kdtui for a remote run\n").encode()))
    files.append((f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: kdtui.remote.wheel\n"
                  b"Root-Is-Purelib: true\nTag: py3-none-any\n"))
    files.append((f"{info}/entry_points.txt", b"[console_scripts]\nkdengine = kdengine.cli:main\n"
                  b"kdtui = kdtui.cli:main\n"))
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files)
    record += f"{info}/RECORD,,\n"
    files.append((f"{info}/RECORD", record.encode()))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            entry = zipfile.ZipInfo(name, date_time=_EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, data)
    data = buffer.getvalue()
    return WheelBuild(filename=f"{DIST}-{version}-py3-none-any.whl", data=data,
                      sha256=hashlib.sha256(data).hexdigest(),
                      kdengine_version=kdengine.__version__)
