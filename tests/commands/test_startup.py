"""What the commands do before torch and MLflow load (issue 17): --help and --list, the checks of the store and of
the variant, and the grid's and tune's first line, all without importing torch, MLflow, Optuna or pandas (each is
seconds of start-up). A fresh interpreter per case: what is in sys.modules afterwards is what the path imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CODE, REPO

HEAVY = ("torch", "mlflow", "optuna", "pandas", "matplotlib")

# Calls a command's main() in a fresh interpreter; prints its exit status and which heavy modules were imported.
PROBE = """
import json, sys
from importlib import import_module
from bench.cli import main_guard
module, argv = sys.argv[1], json.loads(sys.argv[2])
try:
    status = main_guard(import_module(module).main, module)(argv)
except SystemExit as e:  # argparse's --help
    status = e.code
heavy = sys.argv[3].split(",")
print(json.dumps({"status": status, "heavy": sorted(m for m in heavy if m in sys.modules)}))
"""


def probe(module: str, *argv: str, cwd: Path = REPO) -> tuple[dict, str, str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, module, json.dumps(list(argv)), ",".join(HEAVY)],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env={**os.environ, **CODE})
    *out, last = proc.stdout.strip().splitlines()
    return json.loads(last), "\n".join(out), proc.stderr


@pytest.mark.parametrize("module", ["bench.run", "bench.grid", "bench.tune", "bench.evaluate", "bench.report",
                                    "bench.snr"])
def test_help_loads_no_heavy_library(module: str) -> None:
    result, out, _ = probe(module, "--help")
    assert result == {"status": 0, "heavy": []} and "usage:" in out


def test_list_loads_no_heavy_library() -> None:
    result, out, _ = probe("bench.run", "--list")
    assert result == {"status": 0, "heavy": []}
    assert out.splitlines()[0].startswith("sgvb_a ")


@pytest.mark.parametrize("module, argv, phrase", [
    ("bench.run", ["--tracking-uri", "sqlite:////no/such/folder/mlflow.db"], "folder /no/such/folder"),
    ("bench.run", ["--tracking-uri", "file:///tmp/store"], "is a file store"),
    ("bench.run", ["--tracking-uri", "http://127.0.0.1:9"], "is not reachable"),
    ("bench.run", ["--gaussian-variance", "0.5", "--tracking-uri", "sqlite:///{tmp}/mlflow.db"], "Bernoulli"),
    ("bench.evaluate", ["--run-id", "0" * 32, "--tracking-uri", "sqlite:///{tmp}/none.db"], "no tracking store"),
    ("bench.report", ["--tracking-uri", "sqlite:///{tmp}/none.db"], "no tracking store"),
    ("bench.grid", ["--variants", "sgvb_b", "--tracking-uri", "sqlite:///{tmp}/garbage.db"], "cannot be read"),
    ("bench.tune", ["--variant", "sgvb_b", "--trials", "1", "--tracking-uri", "sqlite:///{tmp}/garbage.db"],
     "cannot be read"),
])
def test_a_bad_store_or_variant_is_one_line_before_any_heavy_import(module: str, argv: list[str], phrase: str,
                                                                    tmp_path: Path) -> None:
    (tmp_path / "garbage.db").write_bytes(b"garbage!" * 2048)
    result, out, err = probe(module, *[a.format(tmp=tmp_path) for a in argv], cwd=tmp_path)
    assert result == {"status": 2, "heavy": []}, (result, err)
    (line,) = err.strip().splitlines()
    assert line.startswith(f"{module}: error: ") and phrase in line, line
    assert list(tmp_path.iterdir()) == [tmp_path / "garbage.db"]  # nothing written


@pytest.mark.parametrize("module, argv, first", [
    ("bench.grid", ["--variants", "sgvb_a,sgvb_b", "--latents", "2,10", "--seeds", "1,2,3"],
     "python -m bench.grid: 12 combinations; loading torch, MLflow and Optuna ..."),
    ("bench.tune", ["--variant", "sgvb_b", "--latent", "2", "--trials", "3", "--epochs", "1"],
     "python -m bench.tune: sgvb_b at latent 2, 3 trials of 1 epoch; loading torch, MLflow and Optuna ..."),
])
def test_grid_and_tune_say_what_they_will_do_before_loading(module: str, argv: list[str], first: str,
                                                            tmp_path: Path) -> None:
    """The first line comes before the heavy imports: here the store is refused right after it, so nothing
    heavy is ever loaded, and the line is what the user saw first."""
    (tmp_path / "garbage.db").write_bytes(b"garbage!" * 2048)
    result, out, _ = probe(module, *argv, "--tracking-uri", f"sqlite:///{tmp_path / 'garbage.db'}", cwd=tmp_path)
    assert result == {"status": 2, "heavy": []}
    assert out.splitlines()[0] == first


# bench.run's stdout, watched: which heavy modules are loaded at the moment "started run" is written.
RUN_PROBE = """
import json, sys
from bench.cli import main_guard
from bench.run import main
seen = {}
class Watch:
    def __init__(self, out):
        self.out = out
    def write(self, text):
        if "started run" in text and not seen:
            seen.update({m: m in sys.modules for m in ("torch", "mlflow")})
        return self.out.write(text)
    def __getattr__(self, name):
        return getattr(self.out, name)
sys.stdout = Watch(sys.stdout)
status = main_guard(main, "bench.run")(json.loads(sys.argv[1]))
print(json.dumps({"status": status, "seen": seen}))
"""


def test_started_run_is_printed_before_torch_loads(tmp_path: Path, migrated_store: Path) -> None:
    """The run is made and its id printed with MLflow only (device auto here: no GPU driver on this machine, or
    cpu where there is one); torch and the tensors load after, and the run then trains and finishes."""
    from tests.conftest import copy_store

    uri = copy_store(migrated_store, tmp_path)
    from bench.core.devices import GPU_NODES

    device = "auto" if not any(Path(n).exists() for n in GPU_NODES) else "cpu"
    argv = ["--latent", "2", "--epochs", "1", "--limit-train", "100", "--no-progress", "--device", device,
            "--tracking-uri", uri]
    proc = subprocess.run([sys.executable, "-c", RUN_PROBE, json.dumps(argv)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, **CODE, "OMP_NUM_THREADS": "1"})
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"status": 0, "seen": {"torch": False, "mlflow": True}}, proc.stderr[-2000:]
    assert "finished" in proc.stdout
