"""Exceptions and warnings of boltzkit.

Every error message names the problem and the fix. All exceptions derive from
:class:`BoltzkitError`; the more specific ones also derive from the built-in exception a
Python user would expect (``ValueError``, ``TypeError``, ``ImportError``) so ordinary
``except`` clauses keep working.
"""

from __future__ import annotations


class BoltzkitError(Exception):
    """Base class of every boltzkit error."""


class TargetError(BoltzkitError, ValueError):
    """The target (energy, reward or dataset) is malformed: wrong shape, dtype, NaN values."""


class DomainError(BoltzkitError, ValueError):
    """A state does not belong to its domain (wrong shape, values out of range)."""


class ConfigError(BoltzkitError, TypeError):
    """Unknown or invalid options passed to a sampler or estimator."""


class IncompatibleMethodError(BoltzkitError, ValueError):
    """The requested method cannot handle this kind of target."""


class InfeasibleConstraintError(BoltzkitError, ValueError):
    """No feasible point could be found for a constrained domain."""


class DatasetError(BoltzkitError, ValueError):
    """A dataset is empty or lacks a required key."""


class TrainingDivergedError(BoltzkitError, RuntimeError):
    """Training produced non-finite losses or weights."""


class NonFiniteEnergyError(TargetError):
    """The target returned NaN (or -inf) energies, or non-finite gradients, during sampling.

    Not a divergence of the sampler: the message counts the bad values, names the step and
    the range of the states where they appeared, so the energy can be fixed there."""


class ResultFileError(BoltzkitError, ValueError):
    """A file could not be read as a boltzkit result: truncated, not an npz, unsupported
    content (object arrays, which would need pickle) or a newer format version. The message
    names the file."""


class FileAccessError(BoltzkitError, OSError):
    """A file or folder could not be read or written (missing, a folder, permission denied,
    disk full). The message names the path the user gave, never a temporary file."""


class MissingFileError(FileAccessError, FileNotFoundError):
    """The file does not exist."""


class MissingDependencyError(BoltzkitError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class UnreliableEstimateWarning(UserWarning):
    """Importance weights are degenerate: the log Z error bar cannot be trusted."""


class ConvergenceWarning(UserWarning):
    """A sampler or estimator did not converge within its budget."""


def require(module: str, extra: str):
    """Import an optional dependency or fail with a message naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"{module!r} is needed for this feature but is not installed. "
            f"Install it with: pip install 'boltzkit[{extra}]'"
        ) from exc
