"""Atomic file writes: write to a temporary file beside the target, then rename.

A reader never sees a half-written file, and an interrupted or failed command
leaves no partial output behind.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bayescale.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success."""
    path = Path(path)
    check_writable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        # The writer's process id in the name: a later write can tell a dead writer's file from a live one's.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{path}: cannot write there; a part of {path.parent} is a file, not a folder") from None
    except OSError as error:
        raise InputError(f"{path}: cannot write there ({error.strerror or error})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except Exception as error:
        free = free_bytes(path.parent)
        if out_of_space(error, free):
            tmp_path.unlink(missing_ok=True)
            raise InputError(f"{path}: no space left on its disk ({free:,} bytes free); nothing was written. "
                             "Free some space and rerun") from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


#: A write that fails with less than this free beside it ran out of space, whatever the library
#: reports (NetCDF/HDF5 says only "HDF error"; a plain write says ENOSPC).
FULL_BELOW = 1 << 20


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged process may still write in ``folder``'s file system."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return -1
    return stat.f_bavail * stat.f_frsize


def out_of_space(error: BaseException, free: int) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return 0 <= free < FULL_BELOW


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files a killed writer (SIGKILL, power loss) left beside ``path``.

    Only bayescale's own, by name (``.<name>.<pid>.<random>.tmp``, from :func:`atomic_path`), and only
    where that process is gone: another process writing the same file at this moment keeps its own."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[a-z0-9_]+\.tmp$")
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = pattern.match(candidate.name)
        if match is None or process_alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
            removed.append(candidate)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_writable(path: str | os.PathLike, flag: str | None = None) -> None:
    """Refuse, before any work is done, an output path that names an existing folder."""
    path = Path(path)
    if path.is_dir():
        where = f"{flag} {path}" if flag else str(path)
        raise InputError(f"{where}: is a directory; give a file name")


def shown_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to ``root`` when it lies inside it (results committed to a repository
    must not name the machine's own folders), else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_saved(path: str | os.PathLike, settings: dict, *beside: str | os.PathLike) -> dict | None:
    """A finished result to resume from: the JSON at ``path`` when it (and every file ``beside`` it)
    exists and was made with these ``settings`` (its ``"settings"`` key); else None."""
    path = Path(path)
    if not (path.is_file() and all(Path(b).is_file() for b in beside)):
        return None
    saved = json.loads(path.read_text())
    return saved if saved.get("settings") == settings else None
