"""Variants from outside the package: plugins register variants, and the estimators and likelihoods they use.

A plugin is a module found through the entry-point group ``vae_bench.variants`` (in an installed package's
metadata), or named in ``$VAE_BENCH_PLUGINS`` (comma-separated module paths; the commands' ``--plugin MODULE``
adds to it, so worker processes inherit it). Loading happens when variants.registry is first imported, so every
command sees the same registry. A plugin module registers at import time or in its function ``register()``
(called once loaded); an entry point may also name the function itself:

    from variants.plugins import register_estimator, register_variant
    register_estimator("my_bound", my_bound)         # (model, x, samples, gen, **options) -> LossTerms
    register_variant(Variant("my_variant", "what it is", "my_bound", samples=5))

A plugin that fails to import or registers a name already taken is not a crash of the commands: its failure is
kept in ``FAILURES`` (one line each) and every command stops on it with exit status 2 (bench.cli.main_guard).
See docs/plugins.md.
"""

from __future__ import annotations

import functools
import importlib
import os
import types
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from variants.catalog import ESTIMATOR_NAMES, LIKELIHOOD_NAMES

if TYPE_CHECKING:
    from torch import nn

    from variants.estimators import Estimator
    from variants.registry import Variant

GROUP = "vae_bench.variants"
ENV = "VAE_BENCH_PLUGINS"
FAILURES: list[str] = []  # one line per plugin that could not be loaded
_loaded: set[str] = set()  # modules and entry points already loaded (each is loaded once)


class PluginError(Exception):
    """A plugin's registration was refused (a name taken, a wrong type)."""


def _free(kind: str, name: str, taken: Any) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise PluginError(f"{kind} name {name!r} is not a valid identifier")
    if name in taken:
        raise PluginError(f"{kind} {name!r} is already registered")


def register_estimator(name: str, estimator: Estimator) -> None:
    """Add an estimator: ``estimator(model, x, samples, gen, **options) -> LossTerms``; its keyword options
    among baseline, groups, beta are taken from the variant. Draw noise with variants.terms.sample_eps."""
    from variants.estimators import ESTIMATORS

    _free("estimator", name, ESTIMATOR_NAMES)
    if not callable(estimator):
        raise PluginError(f"estimator {name!r} is not callable")
    ESTIMATORS[name] = estimator
    ESTIMATOR_NAMES.append(name)


def register_likelihood(name: str, factory: Callable[[], nn.Module]) -> None:
    """Add a decoder likelihood: ``factory()`` returns a module with params(out), mean(params) and
    log_prob(x, params) -> log p(x|z) summed over the pixels (variants.likelihoods for the two built in)."""
    from variants.likelihoods import LIKELIHOODS

    _free("likelihood", name, LIKELIHOOD_NAMES)
    if not callable(factory):
        raise PluginError(f"likelihood {name!r} is not callable")
    LIKELIHOODS[name] = lambda variance, learn: factory()
    LIKELIHOOD_NAMES.append(name)


def register_variant(variant: Variant) -> None:
    """Add a variant (a variants.registry.Variant) under its name."""
    from variants.registry import REGISTRY, Variant

    if not isinstance(variant, Variant):
        raise PluginError(f"register_variant takes a variants.registry.Variant, got {type(variant).__name__}")
    _free("variant", variant.name, REGISTRY)
    REGISTRY[variant.name] = variant


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _load(key: str, what: str, load: Callable[[], Any]) -> None:
    """Load one plugin once; a failure goes to FAILURES as one line."""
    if key in _loaded:
        return
    _loaded.add(key)
    try:
        obj = load()
        if isinstance(obj, types.ModuleType):
            obj = getattr(obj, "register", None)  # a module registers at import, or in its register()
        if callable(obj):
            obj()
    except PluginError as e:
        FAILURES.append(f"plugin {what}: {e}")
    except Exception as e:  # an import error or any failure of the plugin's own code: reported, not raised
        FAILURES.append(f"plugin {what} failed to load ({_one_line(e)})")


def load_module(path: str) -> None:
    """Load the plugin module ``path`` (``--plugin``), and pass it on to child processes through $VAE_BENCH_PLUGINS."""
    names = [n for n in os.environ.get(ENV, "").split(",") if n.strip()]
    if path not in names:
        os.environ[ENV] = ",".join([*names, path])
    _load(f"module:{path}", repr(path), functools.partial(_import, path))


def _import(path: str) -> types.ModuleType:
    return importlib.import_module(path)


def load_all() -> None:
    """Every installed entry point of the group, then every module of $VAE_BENCH_PLUGINS."""
    for ep in entry_points(group=GROUP):
        _load(f"ep:{ep.value}", f"{ep.name!r} (entry point {ep.value})", ep.load)
    for path in (p.strip() for p in os.environ.get(ENV, "").split(",")):
        if path:
            _load(f"module:{path}", repr(path), functools.partial(_import, path))
