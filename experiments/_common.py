"""What the experiment scripts share: one-line flag errors, the --out check, atomic outputs."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import uuid
from typing import Callable, Iterable

import jax
import numpy as np


class FlagError(ValueError):
    """A bad setting, reported as ``argument FLAG: message``."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"argument {flag}: {message}")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), still exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def allowed(names: Iterable[str]) -> str:
    return "allowed: " + ", ".join(names)


def check_writable(out: str) -> None:
    """Raises FlagError unless ``out`` is a directory or can be created as one."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise FlagError("--out", f"{out!r} exists and is not a directory; allowed: a writable "
                                 "directory path")
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    try:  # a real test (permission bits say nothing to root or on /proc); leaves nothing behind
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=parent))
    except OSError:
        raise FlagError("--out", f"cannot create or write {out!r} ({parent!r} is not a writable "
                                 "directory); allowed: a writable directory path") from None


def publish(out: str, write: Callable[[str], list[str]]) -> list[str]:
    """Calls ``write(staging_dir)`` (returns file names), then moves each file into ``out``.

    Nothing lands in ``out`` unless every file was written.
    """
    os.makedirs(out, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=out)
    try:
        names = write(staging)
        for name in names:
            os.replace(os.path.join(staging, name), os.path.join(out, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return names


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp)`` on a fresh path in ``path``'s directory, then renames it to ``path``.

    The temporary name keeps the file's extension (``np.savez`` and ``savefig`` go by it).
    ``os.replace`` within one directory is atomic, so a reader sees the old file or the new
    one, never half of one; if ``write`` raises, the old file stays and the temporary is removed.
    """
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    # Not mkstemp: its file would be private (0600); ``write`` creates this one under the umask.
    tmp = os.path.join(folder, f".{stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{ext}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def host(x) -> np.ndarray:
    """A (replicated) array as NumPy; multi-host safe: reads this process's copy."""
    return np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)


def backend_line(devices_used: int, dtype) -> str:
    return (f"JAX {jax.__version__}: backend {jax.default_backend()}, using {devices_used} of "
            f"{jax.device_count()} device(s) ({jax.devices()[0].device_kind}), "
            f"{jax.process_count()} process(es), {np.dtype(dtype).name}")
