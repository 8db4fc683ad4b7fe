"""Fetch the *installed* version's source distribution and keep its test suite on disk.

Only ``tests/`` and ``pyproject.toml`` are extracted: without the package source next to the
tests, the child pytest imports the installed wheel (what threadline runs against), not a copy.
The extraction is cached under ``.threadline/upstream/`` (git-ignored) and reused while the
installed version stays the same.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".threadline" / "upstream"
COMPLETE = ".complete"
KEEP = ("tests/", "pyproject.toml")


class SdistUnavailable(RuntimeError):
    """The source distribution could not be downloaded or unpacked."""


def installed_version(dist: str) -> str:
    """Version of the installed distribution, read at run time (never pinned here)."""
    return importlib.metadata.version(dist)


def upstream_dir(dist: str, cache_dir: Path = CACHE_DIR) -> Path:
    """Directory holding ``tests/`` and ``pyproject.toml`` of the installed ``dist``'s sdist.

    Downloads with ``pip download --no-binary :all:`` on first use; raises SdistUnavailable
    with pip's output when that fails (e.g. no network to the package registry).
    """
    version = installed_version(dist)
    target = cache_dir / f"{dist}-{version}"
    if (target / COMPLETE).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        archive = _download(dist, version, Path(tmp))
        staging = Path(tmp) / "extracted"
        _extract_tests(archive, staging)
        (staging / COMPLETE).write_text(f"{dist}=={version}\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def _download(dist: str, version: str, into: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--no-binary", ":all:", f"{dist}=={version}", "-d", str(into),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SdistUnavailable(f"`{' '.join(command)}` timed out after 300 s") from exc
    archives = sorted(into.glob("*.tar.gz"))
    if done.returncode != 0 or not archives:
        raise SdistUnavailable(
            f"could not download the sdist of {dist}=={version} "
            f"(`{' '.join(command)}` exited {done.returncode}):\n{done.stderr or done.stdout}"
        )
    return archives[0]


def _extract_tests(archive: Path, into: Path) -> None:
    """Unpack ``<top>/tests/**`` and ``<top>/pyproject.toml`` with the top folder stripped."""
    into.mkdir()
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            _top, _, rest = member.name.partition("/")
            if rest.startswith(KEEP) and (member.isfile() or member.isdir()):
                member.name = rest
                members.append(member)
        if not any(m.name == "pyproject.toml" for m in members):
            raise SdistUnavailable(f"{archive.name} has no pyproject.toml at its top")
        tar.extractall(into, members=members, filter="data")
