"""Target adapters: turn objects users already have into boltzkit targets before sampling.

``bk.sample(obj, ...)`` first asks this registry: the first adapter whose ``predicate(obj)``
is true converts ``(obj, n_samples, options)`` into ``(target, n_samples, options)``. This is
how an ``anndata.AnnData`` becomes a :class:`~boltzkit.bio.single_cell.dataset.CellDataset`
(``label_key`` and ``layer`` read from the options, per-type counts given as ``n_samples``
turned into the ``condition`` option) without ``bk.sample`` knowing about AnnData.

Register your own with :func:`register_adapter`::

    bk.adapters.register_adapter(lambda o: isinstance(o, MyData), lambda o, n, opts: (to_target(o), n, opts))

The module also keeps the writers that turn a :class:`~boltzkit.result.Result` back into the
user's container (:func:`register_anndata_writer`, looked up by the result's
``diagnostics["anndata_kind"]``).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from .errors import ConfigError

__all__ = ["register_adapter", "adapt", "register_anndata_writer", "anndata_writer"]

Predicate = Callable[[Any], bool]
Convert = Callable[[Any, Any, dict], "tuple[Any, Any, dict]"]

_ADAPTERS: "list[tuple[Predicate, Convert]]" = []
# kind -> "module:function" (imported on first use) or a callable
_WRITERS: "dict[str, Any]" = {"single_cell": "boltzkit.bio.single_cell.io:result_to_anndata",
                              "spatial": "boltzkit.bio.spatial.io:result_to_anndata"}


def register_adapter(predicate: Predicate, convert: Convert, *, first: bool = True) -> None:
    """Add an adapter. ``predicate(obj) -> bool``; ``convert(obj, n_samples, options) ->
    (target, n_samples, options)`` (``options``: the method options of ``bk.sample``, a dict
    it may consume from). ``first=True`` puts it ahead of the built-in ones."""
    if not callable(predicate) or not callable(convert):
        raise ConfigError("register_adapter needs two callables: predicate(obj) and convert(obj, n_samples, options)")
    _ADAPTERS.insert(0 if first else len(_ADAPTERS), (predicate, convert))


def adapt(target, n_samples, options: dict) -> "tuple[Any, Any, dict]":
    """``(target, n_samples, options)`` after the first matching adapter (unchanged if none)."""
    for predicate, convert in _ADAPTERS:
        if predicate(target):
            return convert(target, n_samples, dict(options))
    return target, n_samples, options


def register_anndata_writer(kind: str, writer) -> None:
    """``writer(result, **kw) -> AnnData`` for results whose ``diagnostics["anndata_kind"]``
    is ``kind`` (a callable, or a ``"boltzkit.module:function"`` string imported on use)."""
    _WRITERS[str(kind)] = writer


def anndata_writer(kind: "str | None"):
    """The writer registered for ``kind`` (None: the spatial writer, the historical default)."""
    w = _WRITERS.get("spatial" if kind is None else str(kind))
    if w is None:
        raise ConfigError(f"no AnnData writer for results of kind {kind!r}; known kinds: {sorted(_WRITERS)}")
    if isinstance(w, str):  # only boltzkit's own modules (the kind comes from a result file)
        mod, _, fn = w.partition(":")
        if not mod.startswith("boltzkit."):
            raise ConfigError(f"refusing to import {mod!r} for an AnnData writer")
        w = getattr(importlib.import_module(mod), fn)
    return w


# ---------------------------------------------------------------------------- built-in: AnnData
def _is_anndata(obj) -> bool:
    from .bio.single_cell.dataset import is_anndata

    return is_anndata(obj)


def _anndata_to_cells(adata, n_samples, options: dict):
    """AnnData -> CellDataset: ``label_key`` (kept: the single-cell methods check it),
    ``layer`` (consumed; default "auto": ``layers["counts"]`` when present, else ``X``);
    ``n_samples`` as ``{label: n}`` becomes ``condition``."""
    from .bio.single_cell.dataset import as_target

    target = as_target(adata, label_key=options.get("label_key"), layer=options.pop("layer", "auto"))
    return _cells_per_type(target, n_samples, options)


def _is_cell_dataset(obj) -> bool:
    from .bio.single_cell.dataset import CellDataset

    return isinstance(obj, CellDataset)


def _cells_per_type(target, n_samples, options: dict):
    """``n_samples={type: n}`` -> ``condition={type: n}`` and ``n_samples=sum``."""
    if isinstance(n_samples, Mapping):
        if options.get("condition") is not None:
            raise ConfigError("give the cells per type either as n_samples={type: n} or as "
                              "condition=..., not both")
        bad = {k: v for k, v in n_samples.items() if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0)}
        if bad or not n_samples or sum(n_samples.values()) == 0:
            raise ConfigError(f"n_samples as a dict gives the cells per type, {{type: int >= 0}}, with "
                              f"at least one cell in all; got {dict(n_samples)!r}")
        options["condition"] = {str(k): int(v) for k, v in n_samples.items()}
        n_samples = int(sum(n_samples.values()))
    return target, n_samples, options


register_adapter(_is_anndata, _anndata_to_cells, first=False)
register_adapter(_is_cell_dataset, _cells_per_type, first=False)
