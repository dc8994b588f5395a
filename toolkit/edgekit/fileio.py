"""Atomic file writes: write to a temporary file beside the target, then rename.

A reader never sees a half-written file, and an interrupted write leaves the previous
version in place (``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgekit import errors


def relative_to_cwd(path: Path) -> str:
    """`` (relative to <cwd>)`` for a relative path, else nothing: for "does not exist" errors,
    whose usual cause is running from another folder."""
    return "" if path.is_absolute() else f" (relative to {Path.cwd()})"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    The temporary name keeps the target's suffix (some writers, Keras among them, insist
    on it). On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    ensure_dir(target.parent)
    suffix = target.suffix if suffix is None else suffix
    handle, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{suffix}",
                                    dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    try:
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        if isinstance(error, OSError) and not isinstance(error, errors.EdgekitError):
            # A full disk, a read-only mount, a permission: the user can fix it.
            raise errors.EdgekitError(
                f"cannot write {target}: {error.strerror or error}. Free space or choose another "
                "output folder, then rerun; the previous file, if any, is unchanged."
            ) from error
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)
    return Path(target)


def write_text(target: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike[str], payload: Any) -> Path:
    return write_text(target, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def copy_file(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)
    return Path(target)


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents), turning OS errors into one clear EdgekitError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise errors.EdgekitError(
            f"cannot create folder {path}: {error.strerror or error}. "
            "Choose another output folder or fix its permissions."
        ) from error
    if not os.access(path, os.W_OK):
        raise errors.EdgekitError(
            f"folder {path} is not writable. Choose another output folder or fix its permissions."
        )
    return path


def sha256_of(path: str | os.PathLike[str]) -> str:
    """A file's sha256; for a folder (a SavedModel), over its files' relative paths and bytes."""
    digest = hashlib.sha256()
    if os.path.isdir(path):
        root = Path(path)
        for member in sorted(item for item in root.rglob("*") if item.is_file()):
            digest.update(member.relative_to(root).as_posix().encode("utf-8") + b"\0")
            digest.update(sha256_of(member).encode("ascii"))
        return digest.hexdigest()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def human_size(num_bytes: int) -> str:
    if num_bytes < 1024:
        return f"{num_bytes} B"
    if num_bytes < 1024 * 1024:
        return f"{num_bytes / 1024:.1f} KB"
    return f"{num_bytes / (1024 * 1024):.2f} MB"
