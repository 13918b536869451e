"""Local state is private: the engine and the server run with umask 0o077 (files 0600,
directories 0700), and an existing ``$IMGPIPE_HOME`` made by an older version is tightened.

``$IMGPIPE_HOME`` holds captured request bodies, the registry database and job logs: nothing
another local user should read."""
from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
DATABASE_FILES = ("imgpipe.db", "imgpipe.db-wal", "imgpipe.db-shm")


def use_private_umask() -> int:
    """Set umask 0o077 for this process and its children; returns the previous umask."""
    return os.umask(PRIVATE_UMASK)


def tighten_home(home: str | os.PathLike) -> None:
    """Make an existing home (owned by this user) 0700 and its database files 0600."""
    home = Path(home)
    try:
        info = home.stat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return
    if stat.S_IMODE(info.st_mode) & 0o077:
        home.chmod(0o700)
    for name in DATABASE_FILES:
        path = home / name
        if path.is_file() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)
