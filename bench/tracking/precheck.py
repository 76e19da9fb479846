"""What a command checks of its tracking store before torch and MLflow load: a bad URI, an unreachable server or
database, or a bad SQLite file is then one line within a fraction of a second, not after seconds of imports
(issue 17). open_store (bench.tracking.store) runs the same checks again, for callers that come in another way.
No MLflow import here."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
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


def check_server(uri: str, timeout: float = 5.0) -> None:
    """An http(s) tracking URI must answer 2xx on /health (a proxy may answer 404 for anything)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if 200 <= response.status < 300:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = str(getattr(e, "reason", e))
    raise UserError(f"tracking server {uri} is not reachable ({reason}); start it, or use a sqlite:/// URI")


def check_database(uri: str, timeout: int = 10) -> None:
    """One quick connection to a database URI's server: MLflow retries a failing one for ~100 s and then
    raises a traceback. A missing driver module raises ModuleNotFoundError, as MLflow would."""
    scheme = uri.split(":", 1)[0].split("+")[0]
    if scheme not in ("postgresql", "mysql", "mssql"):
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    connect_args = {"connect_timeout": timeout} if scheme in ("postgresql", "mysql") else {"timeout": timeout}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args, poolclass=NullPool)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        raise UserError(f"tracking URI {redact(uri)} is malformed ({e})") from None
    try:
        engine.connect().close()
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise UserError(f"tracking database {redact(uri)} cannot be reached ({reason}); start it, or use a "
                        "sqlite:/// URI") from None
    finally:
        engine.dispose()


def redact(uri: str) -> str:
    """The URI without its password, for messages."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", uri)


def check_store(uri: str | None, existing: bool = False, read_only: bool = False) -> Path | None:
    """The store's URI checked as far as it can be without MLflow: its form, a server's or a database's answer, a
    SQLite file's folder, permissions and pages. Returns the SQLite database file, None for other stores."""
    resolved = resolve_tracking_uri(uri)
    if resolved.startswith(("http://", "https://")):
        check_server(resolved)
        return None
    check_form(resolved)
    try:
        check_database(resolved)
    except ModuleNotFoundError as e:  # e.g. postgresql:// wants psycopg 3; postgresql+psycopg2:// wants psycopg2
        raise UserError(f"tracking store {redact(resolved)} needs the Python module {e.name!r}; install it, or name "
                        "the driver in the URI (postgresql+psycopg2://...)") from None
    return check_sqlite(resolved, existing=existing, read_only=read_only)
