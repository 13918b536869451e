"""Archive extraction never writes outside its destination.

Hostile ``model.tar.gz`` files (``../sibling/x``, absolute names, symbolic and hard links) are
built here with :mod:`tarfile` and handed to every extraction the project does: the model
artifact's (evaluation, inference) and the local engine's (code and model archives of jobs).
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from imgclf.artifact import ArtifactError, extract_archive
from pipelines.local.jobs import extract_tar as _extract_tar


def _add_file(tar: tarfile.TarFile, name: str, data: bytes = b"payload") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def hostile_archive(path: Path, case: str, outside: Path) -> Path:
    """A gzip tarball with a valid model.json plus one hostile member of kind ``case``."""
    with tarfile.open(path, "w:gz") as tar:
        _add_file(tar, "model.json", json.dumps({"arch": "x"}).encode())
        if case == "dotdot":
            _add_file(tar, "../sibling/x")
        elif case == "prefix-sibling":  # destination .../model: a name-prefix check lets this by
            _add_file(tar, "../model2/x")
        elif case == "nested-dotdot":
            _add_file(tar, "sub/../../sibling/x")
        elif case == "absolute":
            _add_file(tar, str(outside / "absolute-x"))
        elif case == "symlink":
            _add_link(tar, "escape", str(outside), tarfile.SYMTYPE)
            _add_file(tar, "escape/through-link")
        elif case == "relative-symlink":
            _add_link(tar, "escape", "../sibling", tarfile.SYMTYPE)
        elif case == "hardlink":
            (outside / "victim").write_text("secret")
            _add_link(tar, "hard", str(outside / "victim"), tarfile.LNKTYPE)
        elif case == "fifo":
            info = tarfile.TarInfo("pipe")
            info.type = tarfile.FIFOTYPE
            tar.addfile(info)
    return path


CASES = ["dotdot", "prefix-sibling", "nested-dotdot", "absolute", "symlink", "relative-symlink", "hardlink", "fifo"]


def _written_outside(tmp_path: Path, dest: Path) -> list[str]:
    """Files under tmp_path other than the archive, the destination's content and the victim."""
    found = []
    for path in tmp_path.rglob("*"):
        if dest in path.parents or path == dest or path.name in ("model.tar.gz", "victim"):
            continue
        if path.is_file() or path.is_symlink():
            found.append(str(path.relative_to(tmp_path)))
    return found


@pytest.mark.parametrize("case", CASES)
def test_artifact_extraction_refuses_hostile_members(tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "work" / "model"
    archive = hostile_archive(tmp_path / "model.tar.gz", case, outside)
    with pytest.raises(ArtifactError, match="refusing"):
        extract_archive(archive, dest)
    assert _written_outside(tmp_path, dest) == []
    assert not (dest / "model.json").exists(), "nothing is extracted when any member is refused"
    if case == "hardlink":
        assert (outside / "victim").read_text() == "secret"


def test_artifact_extraction_error_names_the_member(tmp_path):
    archive = hostile_archive(tmp_path / "model.tar.gz", "dotdot", tmp_path)
    with pytest.raises(ArtifactError, match=r"'\.\./sibling/x'"):
        extract_archive(archive, tmp_path / "dest")


def test_artifact_extraction_keeps_ordinary_archives_working(tmp_path):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _add_file(tar, "model.json", b"{}")
        _add_file(tar, "code/inference.py", b"print(1)\n")
    dest = extract_archive(archive, tmp_path / "dest")
    assert (dest / "model.json").read_bytes() == b"{}"
    assert (dest / "code" / "inference.py").read_text() == "print(1)\n"


@pytest.mark.parametrize("case", ["dotdot", "prefix-sibling", "nested-dotdot", "symlink", "relative-symlink", "hardlink", "fifo"])
def test_engine_extraction_refuses_members_that_escape(tmp_path, case):
    """The engine unpacks job code and model archives with tarfile's ``data`` filter."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "job" / "code"
    archive = hostile_archive(tmp_path / "model.tar.gz", case, outside)
    with pytest.raises(tarfile.FilterError):
        _extract_tar(archive, dest)
    assert _written_outside(tmp_path, dest) == []
    if case == "hardlink":
        assert (outside / "victim").read_text() == "secret"


def test_engine_extraction_puts_absolute_names_inside_the_destination(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "job" / "code"
    _extract_tar(hostile_archive(tmp_path / "model.tar.gz", "absolute", outside), dest)
    assert not (outside / "absolute-x").exists()
    inside = [p for p in dest.rglob("absolute-x")]
    assert len(inside) == 1 and dest in inside[0].parents
