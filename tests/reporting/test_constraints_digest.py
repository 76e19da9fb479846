"""The report's Machine line names the lock file the environment was installed through (issue 17)."""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

from bench.reporting.header import constraints_digest, machine


def test_the_digest_is_of_the_file_and_says_which_pins_the_environment_does_not_meet(tmp_path: Path) -> None:
    pins = tmp_path / "constraints.txt"
    pins.write_text(f"# comment\npytest=={metadata.version('pytest')}\n")
    digest = hashlib.sha256(pins.read_bytes()).hexdigest()[:12]
    assert constraints_digest(pins) == f"constraints.txt sha256 `{digest}`, installed as pinned"
    pins.write_text(f"pytest=={metadata.version('pytest')}\nfilelock==0.0.1\nno-such-package-here==1.0\n")
    line = constraints_digest(pins)
    assert line.endswith("2 installed otherwise (filelock, no-such-package-here)") and digest not in line
    assert constraints_digest(tmp_path / "none.txt") == "no none.txt"
    assert "constraints.txt" in machine()
