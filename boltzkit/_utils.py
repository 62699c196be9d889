"""Small shared utilities: devices, seeds, progress bars, atomic files."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

SeedLike = "int | np.random.SeedSequence | None"


# ---------------------------------------------------------------------------- devices
def resolve_device(device: "str | torch.device | None" = "auto") -> torch.device:
    """``"auto"`` (or None) means CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError(f"device={str(device)!r} was requested but CUDA is not available; "
                          "use device='cpu' or device='auto'")
    return dev


# ---------------------------------------------------------------------------- seeds
def resolve_seed(seed: "int | None") -> int:
    """Return a concrete integer seed; None draws fresh entropy (which is then recorded)."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % (2**63))
    if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        from .errors import ConfigError

        raise ConfigError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def torch_generator(seed: int, device: "torch.device | str" = "cpu") -> torch.Generator:
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed) % (2**63))
    return gen


def spawn_generators(seed: int, names: "list[str] | tuple[str, ...]",
                     device: "torch.device | str" = "cpu") -> dict[str, torch.Generator]:
    """Independent torch generators, one per named stream (init, train, sample, ...).

    Streams are derived with numpy's ``SeedSequence.spawn`` keyed by position, so adding a
    new stream at the end never shifts the existing ones.
    """
    children = np.random.SeedSequence(int(seed)).spawn(len(names))
    return {name: torch_generator(int(child.generate_state(1, np.uint64)[0]) % (2**63), device)
            for name, child in zip(names, children)}


def rank_generators(seed: int, names: "list[str] | tuple[str, ...]", device: "torch.device | str" = "cpu",
                    *, rank: int = 0, shared: "tuple[str, ...]" = ("init",),
                    salt: int = 0) -> dict[str, torch.Generator]:
    """:func:`spawn_generators` for one rank of a data-parallel run.

    Streams named in ``shared`` are the same on every rank (networks start identical). Rank 0
    with ``salt=0`` gets exactly the single-process streams; the other streams of rank r >= 1
    come from the SeedSequence child keyed ``(position, r)`` (``(position, r, salt)`` when
    ``salt`` is non-zero, e.g. the step at which a run resumes on more ranks than it saved),
    so every rank draws independent numbers from the one seed.
    """
    gens = spawn_generators(seed, names, device)
    if rank == 0 and salt == 0:
        return gens
    for i, name in enumerate(names):
        if name in shared:
            continue
        key = (i, int(rank)) if salt == 0 else (i, int(rank), int(salt))
        child = np.random.SeedSequence(int(seed), spawn_key=key)
        gens[name] = torch_generator(int(child.generate_state(1, np.uint64)[0]) % (2**63), device)
    return gens


# ---------------------------------------------------------------------------- progress
def progress_enabled(progress: "bool | None") -> bool:
    """None means: on when stderr is a terminal and the CI variable is unset."""
    if progress is None:
        return sys.stderr.isatty() and not os.environ.get("CI")
    return bool(progress)


class _NoBar:
    def __init__(self, iterable=None, **_):
        self._it = iterable

    def __iter__(self):
        return iter(self._it)

    def update(self, n=1):
        pass

    def set_postfix(self, *a, **k):
        pass

    def set_description(self, *a, **k):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def progress_bar(iterable=None, *, total=None, desc=None, enabled: "bool | None" = None, **kw):
    """A tqdm bar, or a silent stand-in with the same methods when disabled."""
    if not progress_enabled(enabled):
        return _NoBar(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False, **kw)


# ---------------------------------------------------------------------------- files
def _new_file_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would give: the existing file's, else 0666 & ~umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        pass
    mask = os.umask(0)  # read the umask (the only portable way), then put it back at once
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: "str | os.PathLike", suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the destination folder; on success move it over ``path``.

    A crash in the body leaves the previous file untouched. The new file gets the mode of the
    file it replaces, or the umask's default for a new file (``mkstemp`` alone would make it
    0600, unreadable to collaborators). An ``OSError`` (folder not writable, disk full) is
    raised as :class:`~boltzkit.errors.FileAccessError` naming ``path``, not the temporary file;
    other exceptions of the body pass through unchanged.
    """
    from .errors import FileAccessError

    path = Path(path)

    def failed(exc: OSError) -> FileAccessError:
        why = exc.strerror or str(exc)
        return FileAccessError(f"could not write {path}: {why}"
                               + ("; choose a folder you can write to" if isinstance(exc, PermissionError)
                                  else ""))

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise failed(exc) from exc
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as exc:
            raise failed(exc) from exc
        try:
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp_path, _new_file_mode(path))
            os.replace(tmp_path, path)
        except OSError as exc:
            raise failed(exc) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def versions() -> dict[str, str]:
    from . import __version__

    return {"boltzkit": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0]}
