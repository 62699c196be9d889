"""Small shared utilities: devices, seeds, progress bars, atomic files."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import ConfigError, FileAccessError, MissingDependencyError


def _finite_real(value) -> bool:
    """Whether ``value`` is a finite real number (a Python or numpy int or float, not a bool)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value)


def check_count(name, value, *, minimum=1, allow_none=False):
    """Raise ConfigError unless ``value`` is an integer >= minimum (or None when allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_number(name, value, *, allow_zero: bool = False, allow_none: bool = False, upper=None):
    """Raise ConfigError unless ``value`` is a finite real number > 0 (>= 0 with ``allow_zero``;
    at most ``upper`` when given; None when allowed): the one check of float options."""
    if value is None and allow_none:
        return
    low_ok = _finite_real(value) and (value >= 0 if allow_zero else value > 0)
    if not low_ok or (upper is not None and value > upper):
        bound = ("non-negative" if allow_zero else "positive") + " finite number"
        bound += f" <= {upper}" if upper is not None else ""
        raise ConfigError(f"{name} must be a {bound}, got {value!r}")


def check_choice(name, value, choices):
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_flag(name, value):
    """Raise ConfigError unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")


def check_fraction(name, value, *, allow_none=False):
    """Raise ConfigError unless ``value`` is a real number in [0, 1) (or None when allowed)."""
    if value is None and allow_none:
        return
    if not _finite_real(value) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1){' or None' if allow_none else ''}, got {value!r}")


def check_positive(name, value, *, allow_none: bool = False, what: str = "a positive number",
                   error: type = ConfigError) -> "float | None":
    """``float(value)`` when ``value`` is a finite real number > 0 (None when allowed); else
    ``error`` (ConfigError unless the caller's layer raises another) naming ``name``."""
    if value is None and allow_none:
        return None
    if not _finite_real(value) or value <= 0:
        raise error(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


def check_training_options(cfg, *, check_lr: bool = True):
    """The options of a trained network: ``lr`` a positive number, ``ema_decay`` in [0, 1),
    ``grad_clip`` a positive finite number or None."""
    if check_lr:
        check_positive("lr", cfg.lr)
    check_fraction("ema_decay", cfg.ema_decay)
    check_number("grad_clip", cfg.grad_clip, allow_none=True)


def package_files(package: str, relatives, *, not_installed: str, missing) -> "list[str]":
    """Paths of data files shipped inside an installed package, located without importing it (so
    loading them costs only the file read).

    Raises MissingDependencyError(``not_installed``) when the package is not installed, and the
    exception ``missing(absent)`` -- the caller's error class and wording; ``absent`` lists the
    paths not found -- when the installation lacks some of the files.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(not_installed)
    root = list(spec.submodule_search_locations)[0]
    paths = [os.path.join(root, rel) for rel in relatives]
    absent = [p for p in paths if not os.path.exists(p)]
    if absent:
        raise missing(absent)
    return paths


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU when it has none)."""
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------- devices
def resolve_device(device: "str | torch.device | None" = "auto") -> torch.device:
    """``"auto"`` (or None) means CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={str(device)!r} was requested but CUDA is not available; "
                          "use device='cpu' or device='auto'")
    return dev


# ---------------------------------------------------------------------------- seeds
def resolve_seed(seed: "int | None") -> int:
    """Return a concrete integer seed; None draws fresh entropy (which is then recorded)."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % (2**63))
    if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def torch_generator(seed: int, device: "torch.device | str" = "cpu") -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed) % (2**63))


def _child_generator(child: np.random.SeedSequence, device) -> torch.Generator:
    """The torch generator seeded by one 64-bit word of a SeedSequence child."""
    return torch_generator(int(child.generate_state(1, np.uint64)[0]), device)


def spawn_generators(seed: int, names: "list[str] | tuple[str, ...]",
                     device: "torch.device | str" = "cpu") -> dict[str, torch.Generator]:
    """Independent torch generators, one per named stream (init, train, sample, ...).

    Streams are derived with numpy's ``SeedSequence.spawn`` keyed by position, so adding a
    new stream at the end never shifts the existing ones.
    """
    children = np.random.SeedSequence(int(seed)).spawn(len(names))
    return {name: _child_generator(child, device) for name, child in zip(names, children)}


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
        gens[name] = _child_generator(np.random.SeedSequence(int(seed), spawn_key=key), device)
    return gens


# ---------------------------------------------------------------------------- progress
# Where there is no terminal (batch jobs, log files, CI), progress goes out as log lines on
# stderr: one at every PROGRESS_LOG_PERCENT of the run if PROGRESS_MIN_INTERVAL_S have passed
# since the last line, and one at least every PROGRESS_LOG_EVERY_S. A run that ends within
# PROGRESS_MIN_INTERVAL_S prints nothing. Before any run projected to last LONG_RUN_S or more,
# an estimate from its first steps is printed once (in every mode but progress=False).
PROGRESS_LOG_PERCENT = 10
PROGRESS_MIN_INTERVAL_S = 5.0
PROGRESS_LOG_EVERY_S = 60.0
LONG_RUN_S = 60.0
ESTIMATE_AFTER_S = 2.0


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where tqdm.auto draws a widget)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # pragma: no cover - a broken IPython install
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_mode(progress: "bool | None") -> str:
    """``"off"`` for ``progress=False``; otherwise ``"bar"`` (a tqdm bar, or a widget in a
    notebook) when stderr is a terminal or a notebook runs the code, else ``"log"`` lines."""
    if progress is not None and not progress:
        return "off"
    return "bar" if (_in_notebook() or sys.stderr.isatty()) else "log"


def progress_enabled(progress: "bool | None") -> bool:
    """Whether any progress is reported: everything but ``progress=False``."""
    return progress_mode(progress) != "off"


def format_duration(seconds: float) -> str:
    """``"250 ms"``, ``"42 s"``, ``"3 min 05 s"``, ``"1 h 12 min"``."""
    s = max(0.0, float(seconds))
    if s < 1:
        return f"{1000 * s:.0f} ms"
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


class _NoBar:
    """``progress=False``: the methods of :class:`_Progress`, silent."""

    def update(self, n=1):
        pass

    def set_postfix(self, *a, **k):
        pass

    def close(self):
        pass


class _Progress:
    """Progress of one loop: a tqdm bar (``mode="bar"``) or log lines on stderr (``"log"``),
    and in both the one-time estimate of a long run from its first steps."""

    def __init__(self, *, total=None, desc=None, initial=0, mode="log", **kw):
        self.total, self.desc, self.n = total, desc or "boltzkit", int(initial)
        self.n0, self.postfix = self.n, {}
        self.t0 = self.t_last = time.monotonic()
        self.bucket, self.printed, self.estimated, self.closed = -1, False, False, False
        self.t_first = None  # end of the first step: the estimate leaves out its warm-up
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, initial=initial, dynamic_ncols=True, leave=False, **kw)

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def update(self, n=1):
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        now = time.monotonic()
        done, elapsed = self.n - self.n0, now - self.t0
        if self.t_first is None:
            self.t_first, self.n_first = now, self.n
        elif not self.estimated and self.total and (
                elapsed >= ESTIMATE_AFTER_S or done >= max(2, (self.total - self.n0) // 20)):
            self.estimated = True  # the rate after the first step (compilation, caches, setup)
            per = (now - self.t_first) / (self.n - self.n_first)
            total_s = (self.t_first - self.t0) + per * max(self.total - self.n_first, 0)
            if total_s >= LONG_RUN_S:
                self._say(f"boltzkit | {self.desc}: this run will take about {format_duration(total_s)} "
                          f"({self.total - self.n0} steps at {format_duration(per)} per step, measured "
                          f"over step{'s' if self.n > self.n_first + 1 else ''} {self.n_first + 1}"
                          f"{'-' + str(self.n) if self.n > self.n_first + 1 else ''}); progress=False silences these reports")
        if self.bar is None and not (self.total and self.n >= self.total):  # at the end close() prints
            bucket = -1 if not self.total else int(100 * self.n / self.total) // PROGRESS_LOG_PERCENT
            since = now - self.t_last
            if (bucket > self.bucket and since >= PROGRESS_MIN_INTERVAL_S) or since >= PROGRESS_LOG_EVERY_S:
                self.bucket = bucket
                self._line(now)

    def _line(self, now, final=False):
        self.t_last, self.printed = now, True
        elapsed, done = now - self.t0, self.n - self.n0
        head = f"step {self.n}" + (f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else "")
        if final:
            tail = f"done in {format_duration(elapsed)}"
        else:
            tail = f"{format_duration(elapsed)} elapsed"
            if self.total and done > 0:
                per = ((now - self.t_first) / (self.n - self.n_first) if self.n > self.n_first
                       else elapsed / done)  # past the first step, its warm-up is left out
                tail += f", ETA {format_duration(per * max(self.total - self.n, 0))}"
        metrics = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        self._say(f"boltzkit | {self.desc}: {head}, {tail}" + (f" | {metrics}" if metrics else ""))

    def set_postfix(self, ordered_dict=None, refresh=True, **kw):
        self.postfix = {**dict(ordered_dict or {}), **kw}
        if self.bar is not None:
            self.bar.set_postfix(self.postfix, refresh=refresh)

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.printed or time.monotonic() - self.t0 >= PROGRESS_MIN_INTERVAL_S:
            self._line(time.monotonic(), final=True)


def progress_bar(*, total=None, desc=None, enabled: "bool | None" = None, **kw):
    """Progress of a loop, with the methods of a tqdm bar (``update``, ``set_postfix``, ``close``).

    ``enabled`` is the user's ``progress`` argument: False is silent; True or None report, as a
    tqdm bar on a terminal and in notebooks (``tqdm.auto``), as log lines on stderr elsewhere
    (step, metrics, elapsed time and ETA; see ``PROGRESS_*`` above). Every mode but False
    prints, once, how long a run will take when its first steps project a minute or more.
    """
    mode = progress_mode(enabled)
    if mode == "off":
        return _NoBar()
    return _Progress(total=total, desc=desc, mode=mode, **kw)


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
