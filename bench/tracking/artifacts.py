"""Artifacts of a SQLite store, relative to the store's folder, so that a store survives ``mv`` and ``cp -r``.

MLflow 3.17 makes every local artifact location absolute when an experiment is created (``resolve_uri_if_local``
resolves a relative one against the working directory) and copies it into every run's ``artifact_uri``: a store
moved elsewhere points at nothing, and a copied one points into its original. MLflow's own relative form is
the tracking server's ``mlflow-artifacts:/PATH``, which ``mlflow server``/``mlflow ui`` resolves against its
``--artifacts-destination`` (``./mlartifacts`` by default). New experiments of a SQLite store get that form
(see ``store.artifact_root``); this module resolves it, for a SQLite tracking URI, to ``DB_FOLDER/mlartifacts/PATH``
at the moment MLflow opens the repository, through MLflow's artifact-repository registry. For http(s) tracking
URIs it is MLflow's own ``MlflowArtifactsRepository``, unchanged.

The resolver is registered in every process that imports ``bench.tracking.store`` and, through the entry point
``mlflow.artifact_repository`` in pyproject.toml, in any MLflow process of an environment where vae-bench is
installed (so plain ``mlflow.pytorch.load_model("runs:/...")`` on a SQLite store works too).
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from mlflow.store.artifact.artifact_repo import ArtifactRepository

# No MLflow import at module level: importing MLflow's artifact modules loads its entry points, ours among them
# (pyproject.toml), which must find ``repository`` defined even while this module is still being imported.

ARTIFACTS_DIR = "mlartifacts"  # beside the database: `mlflow ui` started in the store's folder serves it by default
SCHEME = "mlflow-artifacts"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH[?options]`` URI (relative paths against the working directory)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0]).expanduser().resolve()


def local_artifacts(artifact_uri: str, tracking_uri: str) -> Path | None:
    """Where ``mlflow-artifacts:/PATH`` lives for a SQLite tracking URI; None for anything else (a server's)."""
    db = sqlite_path(tracking_uri)
    parsed = urlparse(artifact_uri)
    if db is None or parsed.scheme != SCHEME or parsed.netloc:
        return None
    return db.parent / ARTIFACTS_DIR / parsed.path.lstrip("/")


def repository(artifact_uri: str, tracking_uri: str | None = None,
               registry_uri: str | None = None) -> ArtifactRepository:
    """MLflow's factory signature for an artifact scheme: a local repository inside the SQLite store's folder,
    else MLflow's proxy-artifact client for a tracking server."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository
    from mlflow.tracking._tracking_service.utils import get_tracking_uri

    _no_run_id_cache()  # also in processes that found this factory through the entry point only
    local = local_artifacts(artifact_uri, tracking_uri or get_tracking_uri())
    if local is None:
        return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    return LocalArtifactRepository(local.as_uri(), tracking_uri=tracking_uri, registry_uri=registry_uri)


class _Uncached(OrderedDict):
    """MLflow 3.17 caches each run's artifact repository in a process-wide dict keyed by the run id alone
    (``_tracking_service.utils._artifact_repos_cache``). A copied store holds the same run ids, so a process that
    opens the copy after the original would write the copy's artifacts into the original's folder (found by
    tests/tracking/test_store_relocation.py). Nothing is kept: each artifact call resolves the run's location in
    its own store, one indexed query."""

    def get(self, key: object, default: object = None) -> object:
        return default

    def __setitem__(self, key: object, value: object) -> None:
        pass


def _no_run_id_cache() -> None:
    from mlflow.tracking._tracking_service import utils

    if not isinstance(getattr(utils, "_artifact_repos_cache", None), (_Uncached, type(None))):
        utils._artifact_repos_cache = _Uncached()


def register() -> None:
    """Resolve ``mlflow-artifacts:/`` in this process (bench.tracking.store calls it on import)."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry

    _artifact_repository_registry.register(SCHEME, repository)
    _no_run_id_cache()


SLUG_MAX = 64  # an artifact folder per experiment: long names are cut (and told apart by a hash) below NAME_MAX


def slug(experiment: str) -> str:
    """The experiment's artifact folder name: safe characters, at most SLUG_MAX of them."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment).strip("_.") or "experiment"
    if len(name) > SLUG_MAX:
        name = f"{name[:SLUG_MAX - 9]}-{hashlib.md5(experiment.encode()).hexdigest()[:8]}"
    return name
