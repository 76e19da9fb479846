"""What a command checks of its tracking store before torch and MLflow load: a bad URI or a bad SQLite file is
then one line within a fraction of a second, not after seconds of imports (issue 17). open_store
(bench.tracking.store) runs the same checks again, for callers that come in another way. No MLflow import here."""

from __future__ import annotations

import os
from pathlib import Path

from bench.errors import UserError
from bench.tracking.names import DEFAULT_TRACKING_URI
from bench.tracking.sqlite_checks import check_sqlite


def resolve_tracking_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (MLflow's default)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_form(uri: str) -> None:
    """A URI MLflow 3 can open as a store at all."""
    if uri.startswith("file:") or "://" not in uri:
        raise UserError(f"tracking URI {uri!r} is a file store, which MLflow 3 no longer accepts by default; "
                        "use sqlite:///PATH.db, postgresql://... or http://HOST:PORT")


def check_store(uri: str | None, existing: bool = False, read_only: bool = False) -> Path | None:
    """The store's URI checked as far as it can be without MLflow (a server's or database's reachability is
    open_store's); returns the SQLite database file, None for other stores."""
    resolved = resolve_tracking_uri(uri)
    if resolved.startswith(("http://", "https://")):
        return None
    check_form(resolved)
    return check_sqlite(resolved, existing=existing, read_only=read_only)
