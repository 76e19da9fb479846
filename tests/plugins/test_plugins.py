"""Variants from outside the package: docs/plugins.md's worked example, installed as a real package (pip into a
temporary folder, found through its entry point) and run end to end by every command in a process of its own; a plugin
that fails to import, or takes a name already registered, stops a command with one line and exit status 2.
The real environment is untouched: the package lives in tmp_path and reaches the commands through PYTHONPATH."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bench.tracking.analyses import find_analysis_run
from bench.tracking.names import SNR_ANALYSIS
from tests.conftest import REPO, copy_store, run_cli

DOC = REPO / "docs" / "plugins.md"
# The test plugin is the documented example, plus a likelihood and a variant that uses it.
EXTRA = '''

class Laplace(torch.nn.Module):
    """log p(x|z) = sum_d -|x_d - m_d| / b - log 2b, m = sigmoid(out), b = 0.1."""

    def params(self, out):
        return torch.sigmoid(out)

    def mean(self, m):
        return m

    def log_prob(self, x, m):
        return (-(x - m).abs() / 0.1 - math.log(0.2)).sum(-1)


def register_more():
    from variants.plugins import register_likelihood
    register_likelihood("laplace", Laplace)
    register_variant(Variant("renyi_laplace", "Renyi bound with a Laplace decoder", "renyi", samples=2,
                             decoder="laplace"))


_register = register


def register():  # noqa: F811
    _register()
    register_more()
'''


def _doc_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    src = tmp_path_factory.mktemp("plugin-src")
    (src / "vae_bench_renyi").mkdir()
    code = _doc_blocks("python")[0]
    assert len(code.strip().splitlines()) <= 40  # the worked example: a complete estimator in under ~40 lines
    (src / "vae_bench_renyi" / "__init__.py").write_text(code + EXTRA)
    (src / "pyproject.toml").write_text(_doc_blocks("toml")[0] + '\n[build-system]\nrequires = ["setuptools"]\n'
                                        'build-backend = "setuptools.build_meta"\n')
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True, timeout=300)
    assert list(target.glob("vae_bench_renyi-*.dist-info/entry_points.txt")) or list(
        target.glob("vae_bench_renyi*.dist-info/entry_points.txt"))
    return f"{target}:{REPO}"


def _run(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(module, *args, env=env, timeout=1200)  # a loaded shared machine: minutes per command


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


# Every command's main() in turn, in one process that found the plugin through its entry point: a process per
# command would pay the interpreter's start-up eight times over (start-up and exit are tested in tests/commands).
# "{variant}" in an argument is the id of that variant's run, looked up when the command starts.
DRIVER = """
import importlib, json, sys
from mlflow import MlflowClient
from bench.cli import main_guard
uri, commands = json.loads(sys.argv[1])
for module, args in commands:
    if any("{" in a for a in args):
        client = MlflowClient(uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        ids = {r.data.params.get("variant"): r.info.run_id for r in runs if "bench.analysis" not in r.data.tags}
        args = [a.format(**ids) for a in args]
    status = main_guard(importlib.import_module(module).main, module)(args)
    print(f"@@ {module} exited {status}", flush=True)
    if status:
        sys.exit(status)
"""


def test_a_plugin_variant_runs_through_every_command(plugin_path: str, tmp_path: Path, migrated_store: Path) -> None:
    env = {"PYTHONPATH": plugin_path, "OMP_NUM_THREADS": "1"}
    uri = copy_store(migrated_store, tmp_path / "store")
    assert "renyi_a05_k5" in _ok(_run("bench.run", "--list", env=env))
    small = ["--latent", "2", "--limit-train", "200", "--device", "cpu", "--tracking-uri", uri, "--no-progress"]
    commands = [
        ["bench.run", ["--variant", "renyi_a05_k5", "--epochs", "1", "--binarize", "dynamic", *small]],
        ["bench.run", ["--variant", "renyi_laplace", "--epochs", "1", *small]],
        ["bench.evaluate", ["--run-id", "{renyi_a05_k5}", "--tracking-uri", uri, "--nll-samples", "5",
                            "--device", "cpu", "--no-progress"]],
        ["bench.snr", ["--run-id", "{renyi_laplace}", "--tracking-uri", uri, "--images", "2",
                       "--repeats", "10", "--k-grid", "1,3", "--device", "cpu"]],
        ["bench.grid", ["--variants", "renyi_a05_k5", "--latents", "2", "--epochs", "1", "--limit-train", "200",
                        "--seeds", "1,2", "--device", "cpu", "--tracking-uri", uri, "--sweep", "plug",
                        "--no-progress"]],
        ["bench.tune", ["--variant", "renyi_a05_k5", "--latent", "2", "--trials", "1", "--epochs", "1",
                        "--limit-train", "300", "--validation", "100", "--device", "cpu", "--tracking-uri", uri]],
        ["bench.report", ["--tracking-uri", uri, "--out", str(tmp_path / "report")]],
    ]
    out = _ok(_driver(uri, commands, env))
    assert out.count("exited 0") == len(commands), out[-2000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("vae-bench").experiment_id
    runs = {r.data.params["variant"]: r for r in client.search_runs(exp) if "variant" in r.data.params
            and r.data.tags.get("bench.sweep") != "plug" and "bench.analysis" not in r.data.tags}
    renyi = runs["renyi_a05_k5"]
    assert (renyi.info.status, renyi.data.params["estimator"], renyi.data.params["beta"]) == ("FINISHED", "renyi",
                                                                                            "0.5")
    assert runs["renyi_laplace"].data.params["decoder"] == "laplace"
    assert "test_nll" in renyi.data.metrics
    snr_run = find_analysis_run(client, runs["renyi_laplace"].info.run_id, SNR_ANALYSIS)  # the study's own run
    assert snr_run is not None and "snr/slope/encoder/iwae" in client.get_run(snr_run).data.metrics
    grid = client.search_runs([exp], "tags.`bench.sweep` = 'plug'")
    assert sorted(r.data.params["seed"] for r in grid if r.info.status == "FINISHED") == ["1", "2"]
    assert client.get_experiment_by_name("vae-bench-tune") is not None
    assert "renyi_a05_k5" in (tmp_path / "report" / "report.md").read_text()


def _driver(uri: str, commands: list[list[object]], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps([uri, commands])], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=1200)


def test_a_plugin_module_given_with_the_flag(plugin_path: str, tmp_path: Path) -> None:
    """--plugin loads a module that is importable but not installed as an entry point."""
    (tmp_path / "my_flag_plugin.py").write_text(
        "from variants.plugins import register_variant\nfrom variants.registry import Variant\n"
        "register_variant(Variant('flagged_b', 'SGVB B under another name', 'sgvb_b'))\n")
    out = _ok(run_cli("bench.run", "--plugin", "my_flag_plugin", "--list", env={"PYTHONPATH": f"{tmp_path}:{REPO}"}))
    assert "flagged_b" in out


@pytest.mark.parametrize("source, message", [
    ("import no_such_module_anywhere\n", "failed to load (ModuleNotFoundError: No module named"),
    ("from variants.plugins import register_variant\nfrom variants.registry import Variant\n"
     "register_variant(Variant('iwae_k5', 'taken', 'iwae'))\n", "variant 'iwae_k5' is already registered"),
    ("from variants.plugins import register_estimator\nregister_estimator('sgvb_b', print)\n",
     "estimator 'sgvb_b' is already registered"),
])
def test_a_broken_plugin_is_one_line_and_exit_2(tmp_path: Path, source: str, message: str) -> None:
    (tmp_path / "broken_plugin.py").write_text(source)
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}", "VAE_BENCH_PLUGINS": "broken_plugin"}
    for command in ("bench.run", "bench.report"):
        proc = run_cli(command, "--help" if command == "bench.report" else "--list", env=env)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert message in lines[0] and "plugin 'broken_plugin'" in lines[0]
