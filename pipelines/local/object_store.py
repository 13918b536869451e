"""The local object store: ``s3://bucket/key`` ↔ ``<root>/bucket/key`` on disk."""
from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse


class ObjectStoreError(ValueError):
    """A URI that is not ``s3://bucket/key`` or escapes the store."""


class ObjectStore:
    """Files under ``root`` addressed by S3 URIs, as SageMaker addresses S3."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def path(self, uri: str) -> Path:
        """Local path of ``uri`` (which need not exist yet)."""
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ObjectStoreError(f"not an S3 URI: {uri!r}")
        path = (self.root / parsed.netloc / parsed.path.lstrip("/")).resolve()
        if path != self.root and self.root not in path.parents:
            raise ObjectStoreError(f"{uri!r} points outside the object store")
        return path

    def uri(self, bucket: str, key: str = "") -> str:
        return f"s3://{bucket}/{key.lstrip('/')}"

    def exists(self, uri: str) -> bool:
        return self.path(uri).exists()

    def put_bytes(self, uri: str, data: bytes) -> Path:
        path = self.path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def upload(self, local: str | Path, uri: str) -> Path:
        """Copy a file or a directory tree to ``uri`` (a prefix for directories)."""
        src, dest = Path(local), self.path(uri)
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        return dest

    def download(self, uri: str, local: str | Path) -> Path:
        """Copy the object, or every object under the prefix, to ``local``."""
        src, dest = self.path(uri), Path(local)
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        elif src.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        else:
            raise FileNotFoundError(f"{uri} does not exist in the local object store ({src})")
        return dest
