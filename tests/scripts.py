"""Container scripts in tests: load one (``steps/preprocess.py``, ...) as a module once per test
session; put a source-directory tarball of scripts into the local object store.

Each script runs as ``__main__`` in its container, so the tests import it from its file. Several
test modules use the same script: they share one module object under one name, because process
pools pickle functions by module name and a second copy under that name breaks them.
"""
from __future__ import annotations

import importlib.util
import io
import sys
import tarfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str, relative_path: str) -> ModuleType:
    """The module ``name`` made from ``REPO/relative_path`` (the one already loaded, if any)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # worker processes unpickle functions by module name
    spec.loader.exec_module(module)
    return module


def put_tarball(store, uri: str, files: dict[str, str | bytes]) -> str:
    """A ``.tar.gz`` of ``files`` (name -> text or bytes, at the archive root) put at ``uri`` of
    the local object ``store`` (a ``sourcedir.tar.gz``, a ``model.tar.gz``); returns ``uri``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    store.put_bytes(uri, buf.getvalue())
    return uri
