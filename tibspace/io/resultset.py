"""A run's output folder as one result set, swapped whole.

A run writes every file into a hidden staging folder beside ``out_dir`` (same
file system) and then exchanges the two folders in one ``renameat2(...,
RENAME_EXCHANGE)`` call, so a reader (or a kill at any moment) sees either the
complete previous result or the complete new one, never a mix. Files in
``out_dir`` that tibspace did not write (not listed in the previous result's
manifest, ``tibspace_manifest.json``) are hard-linked into the new set first, so
they survive; every file the previous result listed is replaced or dropped.

Where the file system cannot exchange folders (``EINVAL``/``ENOSYS``), the
swap falls back to two renames with the old set parked under a recovery name;
:func:`recover` (run at the start of every write) restores or finishes an
interrupted swap and removes stale staging and scratch folders (:func:`work_folder`).

Every output name is checked by :func:`safe_path`: it must resolve inside the
result folder (names from panels, channels, phenotypes and sample ids are made
safe with :func:`safe_name`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from tibspace.errors import InputError

MANIFEST = "tibspace_manifest.json"
_STAGE_TAG = ".tibspace-staging-"
_OLD_TAG = ".tibspace-previous-"
_WORK_TAG = ".tibspace-work-"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_name(name: str, *, max_len: int = 100) -> str:
    """A file-name component from any text: no separators, no leading dots.

    Characters other than letters, digits and ``. _ + -`` become ``_``;
    ``..`` and absolute names cannot escape a folder.

    Examples
    --------
    >>> safe_name("../../../X")
    'X'
    >>> safe_name("/var/X")
    'var_X'
    >>> safe_name("CD3: CD8")
    'CD3_CD8'
    """
    s = _UNSAFE.sub("_", str(name)).strip("._")
    s = re.sub(r"\.{2,}", ".", s)
    return (s or "_")[:max_len]


def safe_path(folder: str | os.PathLike, *parts: str) -> Path:
    """``folder / parts`` after checking that it resolves inside ``folder``.

    Raises
    ------
    InputError
        When the resolved path lies outside ``folder`` (e.g. ``..`` or an
        absolute part).
    """
    base = Path(folder).resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise InputError(f"output name {'/'.join(map(str, parts))!r} would be written outside {folder}; "
                         "expected a plain file name")
    return Path(folder).joinpath(*parts)


# ------------------------------------------------------------------ swapping
def _renameat2():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _siblings(out_dir: Path, tag: str) -> list[Path]:
    prefix = f".{out_dir.name}{tag}"
    if not out_dir.parent.is_dir():
        return []
    return sorted(p for p in out_dir.parent.iterdir() if p.name.startswith(prefix))


def _owner_pid(p: Path) -> int | None:
    m = re.search(r"-(\d+)-[0-9a-f]+$", p.name)
    return int(m.group(1)) if m else None


def recover(out_dir: str | os.PathLike) -> None:
    """Finish or undo an interrupted swap of ``out_dir`` and remove stale staging folders.

    A parked previous set whose swap never completed (``out_dir`` missing) is
    put back; parked sets and staging folders of processes that are gone are
    removed.
    """
    out_dir = Path(out_dir)
    for old in _siblings(out_dir, _OLD_TAG):
        pid = _owner_pid(old)
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue
        if not out_dir.exists():
            os.replace(old, out_dir)  # the fallback swap died between its two renames
        else:
            shutil.rmtree(old, ignore_errors=True)
    for stage in _siblings(out_dir, _STAGE_TAG):
        pid = _owner_pid(stage)
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue
        shutil.rmtree(stage, ignore_errors=True)
    for work in _siblings(out_dir, _WORK_TAG):  # this process's own are still in use
        pid = _owner_pid(work)
        if pid is not None and _pid_alive(pid):
            continue
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def work_folder(out_dir: str | os.PathLike) -> Iterator[Path | None]:
    """Yield a hidden scratch folder beside ``out_dir`` (same file system), removed on exit.

    A run's temporary files (segmentation tile crops, zarr label images) live
    there; a killed run's folder is removed by the next :func:`recover`. Yields
    ``None`` (use the system temp folder) when the folder cannot be made.
    """
    out_dir = Path(out_dir)
    work = out_dir.parent / f".{out_dir.name}{_WORK_TAG}{os.getpid()}-{os.urandom(4).hex()}"
    try:
        work.mkdir()
    except OSError:  # e.g. no parent yet or read-only: the write reports it in one line later
        work = None
    try:
        yield work
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def read_manifest(folder: Path) -> set[str]:
    """Relative paths (POSIX) that the tibspace result in ``folder`` wrote."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return set(data.get("files", []))
    except (OSError, ValueError, AttributeError):
        return set()


def _carry_over_foreign_files(old: Path, stage: Path, ours: set[str]) -> None:
    """Hard-link (or copy) every file of ``old`` that tibspace did not write into ``stage``."""
    for root, dirs, files in os.walk(old):
        rel_root = Path(root).relative_to(old)
        for name in files:
            rel = (rel_root / name).as_posix()
            if rel in ours or rel == MANIFEST or (stage / rel).exists():
                continue
            src, dst = Path(root) / name, stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
                continue
            _link_or_copy(src, dst)
        for name in dirs:
            (stage / rel_root / name).mkdir(parents=True, exist_ok=True)
            if os.path.islink(Path(root) / name):
                dirs.remove(name)


def _write_manifest(stage: Path, run_files: list[str]) -> None:
    text = json.dumps({"files": sorted(run_files)}, indent=1) + "\n"
    (stage / MANIFEST).write_text(text, encoding="utf-8")


@contextlib.contextmanager
def result_set(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces ``out_dir`` as a whole.

    Everything written into the yielded folder becomes the new result set
    (listed in its manifest); on any exception the staging folder is removed
    and ``out_dir`` is untouched.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> with result_set(out) as stage:
    ...     _ = (stage / "metrics.json").write_text("{}")
    >>> sorted(p.name for p in out.iterdir())
    ['metrics.json', 'tibspace_manifest.json']
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    recover(out_dir)
    stage = out_dir.parent / f".{out_dir.name}{_STAGE_TAG}{os.getpid()}-{os.urandom(4).hex()}"
    stage.mkdir()
    try:
        yield stage
        run_files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        if out_dir.exists():
            _carry_over_foreign_files(out_dir, stage, read_manifest(out_dir))
        _write_manifest(stage, run_files)
        _swap_into_place(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def extended_result_set(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder holding ``out_dir``'s current result set; what is written into it joins the set.

    The current set's files are hard-linked (or copied) into the staging
    folder, which then replaces ``out_dir`` whole as in :func:`result_set`:
    a reader sees the set with or without the new files, never part of one.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> with result_set(out) as stage:
    ...     _ = (stage / "report.html").write_text("<p>")
    >>> with extended_result_set(out) as stage:
    ...     _ = (stage / "report.pdf").write_bytes(b"%PDF-")
    >>> sorted(read_manifest(out))
    ['report.html', 'report.pdf']
    """
    out_dir = Path(out_dir)
    ours = read_manifest(out_dir)
    with result_set(out_dir) as stage:
        for rel in sorted(ours):
            src, dst = out_dir / rel, stage / rel
            if src.is_file() and not src.is_symlink():
                dst.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(src, dst)
        yield stage


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _swap_into_place(stage: Path, out_dir: Path) -> None:
    """Make ``stage`` the new ``out_dir``; afterwards ``stage`` holds the old set (or nothing)."""
    if not out_dir.exists():
        os.rename(stage, out_dir)
        return
    mode = os.stat(out_dir).st_mode & 0o7777
    os.chmod(stage, mode)
    if exchange(stage, out_dir):
        return
    parked = out_dir.parent / f".{out_dir.name}{_OLD_TAG}{os.getpid()}-{os.urandom(4).hex()}"
    os.rename(out_dir, parked)
    os.rename(stage, out_dir)
    shutil.rmtree(parked, ignore_errors=True)


def check_free_space(out_dir: str | os.PathLike, needed_bytes: int) -> None:
    """One-line :class:`InputError` when ``out_dir`` cannot take ``needed_bytes`` or is not writable.

    Checked before anything is written, so a full or read-only disk never
    leaves a half-written result (nor crashes a writer library part-way).
    """
    out_dir = Path(out_dir)
    probe = out_dir if out_dir.exists() else next((p for p in out_dir.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"--out {out_dir}: {probe} is not writable; choose another output folder")
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise InputError(f"--out {out_dir}: {free / 2**20:.0f} MiB free on its disk, the results need about "
                         f"{needed_bytes / 2**20:.0f} MiB; free space or choose another output folder")
