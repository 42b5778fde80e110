"""Atomic file writes (readers never see half a file, a crash leaves the old one intact) and
safe file names for values that come from data (`safe_name`, `series_file`)."""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from orthodiff.errors import OrthodiffError


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(temp_path)` for a temporary file beside `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file follows the umask
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10))}
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


def unsafe_reason(value) -> str | None:
    """Why `value` cannot be a file-name component on every common file system (None: it can).

    Refused: empty, `.` and `..`, path separators and drive colons (`/`, `\\`, `:`), NUL and
    control characters, the characters Windows forbids (`*?"<>|`), a trailing dot or space,
    Windows device names (`CON`, `NUL`, `COM1`..., with any extension) and names over 200
    characters. Values are refused rather than rewritten, so two ids never map to one file."""
    text = value if isinstance(value, str) else str(value)
    bad = _UNSAFE.search(text)
    return ("empty" if not text.strip() else
            "'.' or '..'" if text in (".", "..") else
            f"contains {bad.group()!r}" if bad else
            "ends with a dot or a space" if text[-1] in ". " else
            "a reserved device name on Windows" if text.split(".")[0].upper() in _RESERVED else
            "longer than 200 characters" if len(text) > 200 else None)


def safe_name(value, what: str = "name") -> str:
    """`value` as text if it is a safe file-name component (`unsafe_reason`), else one OrthodiffError."""
    why = unsafe_reason(value)
    if why:
        raise OrthodiffError(f"{what} {value!r} cannot name a file ({why}); use letters, digits, '-', '_' and '.'")
    return str(value)


def series_file(folder: str | Path, series_id, suffix: str = ".nii.gz") -> Path:
    """The file of one series in `folder` (`<folder>/<series_id><suffix>`), never outside it."""
    return Path(folder) / f"{safe_name(series_id, 'series_id')}{suffix}"


def read_weights(path: str | Path, what: str, hint: str) -> dict:
    """The dict of tensors in a torch file we expect to be `what`, read with `weights_only=True`
    (no code in the file runs), or one OrthodiffError naming the file, what it should be and
    `hint` (how to get a good one)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise OrthodiffError(f"{path}: {what} not found; {hint}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for files that are not its weights
        first = (str(err).strip().splitlines() or [""])[0][:120]
        raise OrthodiffError(f"{path}: not a readable {what} ({type(err).__name__}: {first}); {hint}") from None
    if not isinstance(saved, dict):
        raise OrthodiffError(f"{path}: not a {what} (holds a {type(saved).__name__}, not a dict of weights); {hint}")
    return saved


LOCK = ".orthodiff.lock"


@contextmanager
def folder_lock(folder: str | Path):
    """Hold `folder` for one job: a second job writing the same folder stops with one error
    instead of silently replacing the first one's results. The lock file names the holder
    (host and process id); a lock left by a process that is gone (killed) is taken over.
    Folders made only to hold the lock are removed again if the job left nothing in them."""
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    lock, me = folder / LOCK, f"{socket.gethostname()} {os.getpid()}"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock.read_text().strip() if lock.is_file() else ""
            host, _, pid = holder.partition(" ")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                lock.unlink(missing_ok=True)  # its job was killed
                continue
            raise OrthodiffError(f"{folder}: another orthodiff job ({holder or 'starting'}) is writing this folder; wait "
                                 f"for it to finish or choose another output folder (delete {lock} if that job is gone)")
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    try:
        yield folder
    finally:
        if lock.is_file() and lock.read_text().strip() == me:
            lock.unlink()
        for path in made:
            try:
                path.rmdir()  # only if empty
            except OSError:
                break


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
