"""Small helpers shared by every stage: the user-facing error type, registries, atomic writes, file hashing and
naming the file behind a native decoder's complaint."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEVICES = ("auto", "cpu", "cuda")  # where a model runs: auto = CUDA when present
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


log = logging.getLogger("akd")


class AkdError(Exception):
    """A problem the user can fix (bad argument, missing or malformed file); the CLI prints it as one line."""


class Registry(dict):
    """A name -> builder table with a ``register(name)`` decorator (timm's ``register_model`` pattern): adding a
    target, student, evaluation method or backend is one decorated function; errors list the table's names."""

    def register(self, name: str):
        def add(builder):
            self[name] = builder
            return builder
        return add


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    A crash or error mid-write leaves the previous file untouched, never a half-written artifact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; artifacts get the usual permissions
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def check_writable(path: str | os.PathLike, kind: str = "file") -> Path:
    """Refuse an output location before any work is done: ``kind`` "file" (an existing folder there, or a parent
    that cannot be created or written) or "dir" (an existing file there, or an unwritable folder)."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise AkdError(f"{path}: is a folder; expected a file path for the output")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise AkdError(f"{path}: is a file; expected a folder for the output")
    folder = path if kind == "dir" else path.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise AkdError(f"{path}: cannot be created ({existing} is a file)")
    try:  # a real write, not os.access: read-only mounts and ACLs answer only to trying
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise AkdError(f"{path}: cannot be written ({existing}: {exc.strerror})") from None
    if kind == "file" and path.exists() and not os.access(path, os.W_OK):
        raise AkdError(f"{path}: cannot be overwritten (not writable)")
    return path


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


_native_lock = threading.Lock()
_native_capture = {"enabled": False}


def separate_python_stderr() -> None:
    """Give Python's ``sys.stderr`` a descriptor of its own (a duplicate of fd 2), so ``native_messages`` can catch
    what C libraries write to fd 2 without catching tqdm's or logging's lines. The CLI calls it before it sets up
    logging; a library user who never calls it sees native messages exactly as before."""
    original = sys.stderr
    if _native_capture["enabled"] or original is not sys.__stderr__ or original is None:  # done, or pytest's
        return
    original.flush()
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(2), "wb", buffering=0), encoding=original.encoding,
                                  errors="backslashreplace", line_buffering=True)
    _native_capture["enabled"] = True


@contextlib.contextmanager
def native_messages(source: str | os.PathLike) -> Iterator[None]:
    """Run a native decoder call with fd 2 captured, re-emitting each line as a warning that names ``source``:
    libjpeg and FFmpeg print "Premature end of JPEG file" or "moov atom not found" without saying which file."""
    if not _native_capture["enabled"]:
        yield
        return
    with _native_lock, tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if line.strip():
                    log.warning("%s: %s", source, line.strip())
