"""Where a run's code came from, as MLflow's own context tags (shown on a run's page as Source, Created by and
Git commit) and whether the working tree had uncommitted changes.

Git is asked about the folder of the bench package itself, never the working directory (a user may run the
suite from anywhere): one ``git rev-parse`` and one ``git status --porcelain`` per process, cached. Nothing git
related when the package is not in a git checkout (an installed wheel) or git is missing.
"""

from __future__ import annotations

import getpass
import subprocess
import sys
from functools import cache
from pathlib import Path

from bench.tracking.names import GIT_COMMIT_TAG, GIT_DIRTY_TAG, SOURCE_NAME_TAG, SOURCE_TYPE_TAG, USER_TAG

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # bench/


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


@cache
def git_state() -> tuple[str, bool] | None:
    """(commit, dirty) of the checkout holding the bench package, or None when it is not one."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None
    status = _git("status", "--porcelain")
    return commit.strip(), bool(status and status.strip())


def source_name() -> str:
    """The command that made the run, as a user typed it: ``bench.run``, ``bench.grid`` ... (else the script)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name.removesuffix(".__main__")
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    return Path(argv0).name


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "unknown"


def provenance_tags() -> dict[str, str]:
    """Source, user, and (in a git checkout) the commit and whether the tree was dirty: for every run."""
    tags = {SOURCE_NAME_TAG: source_name(), SOURCE_TYPE_TAG: "LOCAL", USER_TAG: user()}
    state = git_state()
    if state is not None:
        tags[GIT_COMMIT_TAG], dirty = state
        tags[GIT_DIRTY_TAG] = str(dirty).lower()
    return tags
