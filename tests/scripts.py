"""Load a container script (``steps/preprocess.py``, ...) as a module once per test session.

Each script runs as ``__main__`` in its container, so the tests import it from its file. Several
test modules use the same script: they share one module object under one name, because process
pools pickle functions by module name and a second copy under that name breaks them.
"""
from __future__ import annotations

import importlib.util
import sys
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
