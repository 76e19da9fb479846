"""bench.report on a real store: short real runs of sgvb_a and sgvb_b at two latent sizes and two seeds, a run that
failed (NaN loss), a finished run with missing metrics, one evaluated run and a small tuning study."""

from __future__ import annotations

import importlib
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from bench import report
from bench.cli import main_guard
from bench.reporting import data as report_data
from bench.run import main as run_main
from bench.tracking.names import SWEEP_TAG
from bench.tracking.store import open_store
from tests.conftest import run_cli

SWEEP = "report-test"
COMMON = ["--epochs", "2", "--limit-train", "300", "--no-progress", "--sweep", SWEEP]
DATE_LINE = re.compile(r"^- \*\*Date:\*\* .*$", re.M)
LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


@dataclass
class Store:
    uri: str
    root: Path
    out: Path
    text: str
    failed_id: str
    missing_id: str
    evaluated: bool
    tune_error: str | None


def section(text: str, title: str) -> str:
    """The Markdown of one '## ' section (without its heading line)."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"no section {title!r} in the report"
    return m.group(1)


def rows(text: str, first: str) -> list[dict[str, str]]:
    """Rows of the Markdown tables in ``text`` whose first cell is ``first``, as {header: cell}."""
    out, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|:- "):
            row = dict(zip(header, cells, strict=True))
            if cells[0] == first:
                out.append(row)
    return out


def add_missing_metrics_run(client: MlflowClient, like: str) -> str:
    """A FINISHED run with the params of ``like`` (seed 3) that logged one epoch of some metrics only, as a run
    made by an older or interrupted tool would look."""
    src = client.get_run(like)
    run = client.create_run(src.info.experiment_id, run_name="sgvb_b-z2-L1-s3", tags={SWEEP_TAG: SWEEP})
    params = {**src.data.params, "seed": "3"}
    metrics = [Metric(k, v, 0, 1) for k, v in {"train_loss": 500.0, "train_recon": 499.0, "train_kld": 1.0,
                                                 "test_loss": 420.0}.items()]
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag("mlflow.runName", "sgvb_b-z2-L1-s3")])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for variant in ("sgvb_a", "sgvb_b"):
        for latent in ("2", "10"):
            for seed in ("1", "2"):
                assert run_main(["--variant", variant, "--latent", latent, "--seed", seed, "--tracking-uri", uri,
                                 *COMMON]) == 0
    # A real failure: the loss becomes NaN at once.
    assert run_main(["--variant", "sgvb_b", "--latent", "2", "--seed", "9", "--lr", "1e30", "--tracking-uri", uri,
                     *COMMON]) == 1
    # An experiment whose only run failed.
    assert run_main(["--variant", "sgvb_a", "--latent", "2", "--lr", "1e30", "--tracking-uri", uri,
                     "--experiment", "broken", "--epochs", "1", "--limit-train", "300", "--no-progress"]) == 1
    client = open_store(uri)
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("vae-bench").experiment_id])}
    failed_id = runs["sgvb_b-z2-L1-s9"].info.run_id
    missing_id = add_missing_metrics_run(client, runs["sgvb_b-z2-L1-s1"].info.run_id)
    evaluate = importlib.import_module("bench.evaluate")
    evaluated = hasattr(evaluate, "main")
    if evaluated:  # test NLL and gradient variance in one run
        assert evaluate.main(["--run-id", runs["sgvb_b-z10-L1-s1"].info.run_id, "--tracking-uri", uri,
                              "--nll-samples", "5", "--gradient-variance", "--repeats", "2",
                              "--no-progress"]) == 0
    tune_error = None
    try:  # a small Optuna study in bench.tune's own experiment of the same store
        tune = importlib.import_module("bench.tune")
        assert tune.main(["--variant", "sgvb_b", "--latent", "2", "--trials", "2", "--epochs", "1",
                          "--limit-train", "300", "--validation", "200", "--study-name", "tiny",
                          "--tracking-uri", uri]) == 0
    except Exception as e:  # another module's failure should not hide this one's results
        tune_error = f"{type(e).__name__}: {e}"
    out = root / "report"
    assert report.main(["--tracking-uri", uri, "--sweep", SWEEP, "--out", str(out), "--date", "2024-01-01"]) == 0
    return Store(uri, root, out, (out / "report.md").read_text(), failed_id, missing_id, evaluated, tune_error)


def test_summary_names_both_variants_at_both_latents(store: Store) -> None:
    summary = section(store.text, "Summary")
    for variant in ("sgvb_a", "sgvb_b"):
        assert sorted(r["z"] for r in rows(summary, variant)) == ["10", "2"]
    assert "test −ELBO" in summary and "test BCE" in summary and "test KL" in summary
    assert store.text.startswith("# vae-bench report: sweep `report-test`")


def test_trend_figures_exist_beside_the_report_with_relative_links(store: Store) -> None:
    links = LINK.findall(store.text)
    for link in links:
        assert not link.startswith(("/", "file:", "http")) and ".." not in link, link
        path = store.out / link
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
    for name in ("trends_test_bernoulli.png", "trends_train_bernoulli.png", "final_vs_latent.png",
                 "best_sgvb-a_reconstruction.png", "best_sgvb-b_samples.png"):
        assert f"figures/{name}" in links
    assert sorted(p.name for p in (store.out / "figures").iterdir()) == sorted(Path(link).name for link in links)


def test_failed_run_is_listed_apart_and_not_averaged(store: Store) -> None:
    failed = section(store.text, "Failed, killed and unfinished runs")
    (row,) = rows(failed, "FAILED")
    assert row["run"] == f"sgvb_b-z2-L1-s9 (`{store.failed_id[:8]}`)"
    assert "nan" in row["reason (bench.failure)"]
    # The summary's sgvb_b z=2 cell is the mean +- standard error of the FINISHED runs only (seeds 1, 2 and 3).
    client = MlflowClient(store.uri)
    finished = [r for r in client.search_runs([r.info.experiment_id for r in [client.get_run(store.failed_id)]],
                                              f"tags.`{SWEEP_TAG}` = '{SWEEP}' and params.variant = 'sgvb_b' "
                                              "and params.latent = '2'")
                if r.info.status == "FINISHED"]
    losses = [r.data.metrics["test_loss"] for r in sorted(finished, key=lambda r: r.data.params["seed"])]
    assert len(losses) == 3
    (row,) = [r for r in rows(section(store.text, "Summary"), "sgvb_b") if r["z"] == "2"]
    assert row["seeds"] == "1, 2, 3"
    assert row["n"] == "3"
    # Seed 3 logged test_loss at epoch 1 of its target only: a value from before the final epoch is not averaged.
    losses = losses[:2]
    assert row["test −ELBO"] == (f"{statistics.mean(losses):.2f} ± {statistics.stdev(losses) / 2 ** 0.5:.2f} "
                                 "(2 of 3 runs)")
    assert store.failed_id[:8] not in section(store.text, "Reconstructions and samples")


def test_finished_run_with_missing_metrics_is_reported_as_such(store: Store) -> None:
    missing = section(store.text, "Finished runs with missing metrics")
    (row,) = rows(missing, f"sgvb_b-z2-L1-s3 (`{store.missing_id[:8]}`)")
    assert "test_kld" in row["missing metrics"] and "test_loss" not in row["missing metrics"]
    assert row["epochs logged"] == "1 of 2"
    (summary,) = [r for r in rows(section(store.text, "Summary"), "sgvb_b") if r["z"] == "2"]
    assert summary["test KL"].endswith("(2 of 3 runs)")  # the run without test_kld counts, as missing
    assert summary["epochs"] == "1–2"
    # Its test_loss is of epoch 1 of 2: not missing, but listed as not re-evaluated at the final epoch.
    (st,) = rows(section(store.text, "Metrics not re-evaluated at the final epoch"),
                 f"sgvb_b-z2-L1-s3 (`{store.missing_id[:8]}`)")
    assert (st["metric"], st["not re-evaluated at epoch"], st["latest value from epoch"]) == ("test_loss", "2", "1")


def test_same_store_gives_the_same_report(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert report.main(["--tracking-uri", store.uri, "--sweep", SWEEP, "--out", str(out), "--date", "2030-12-31"]) == 0
    again = (out / "report.md").read_text()
    assert "2030-12-31" in again and "2030-12-31" not in store.text
    assert DATE_LINE.sub("", again) == DATE_LINE.sub("", store.text)
    for png in sorted((store.out / "figures").glob("*.png")):  # the figures too, byte for byte
        assert (out / "figures" / png.name).read_bytes() == png.read_bytes(), png.name


def test_evaluation_metrics_are_used_where_present(store: Store) -> None:
    if not store.evaluated:
        pytest.skip("bench.evaluate has no command line yet")
    summary = section(store.text, "Summary")
    (row,) = [r for r in rows(summary, "sgvb_b") if r["z"] == "10"]
    assert row["test NLL"].endswith("(1 of 2 runs)")  # one of the two runs was evaluated
    grad = section(store.text, "Gradient variance")
    assert "score function" in grad and "figures/gradient_variance_ratios.png" in grad
    assert (store.out / "figures" / "gradient_variance_ratios.png").is_file()


def test_tuning_studies_are_reported(store: Store, tmp_path: Path) -> None:
    if store.tune_error:
        pytest.skip(f"bench.tune did not run: {store.tune_error}")
    tuning = section(store.text, "Tuning studies")
    (row,) = rows(tuning, "tiny")
    assert (row["variant"], row["z"], row["trials"]) == ("sgvb_b", "2", "2")
    assert "tiny" not in section(store.text, "Summary")  # trials are not runs of the comparison
    # The tuning experiment alone gives a report of its studies.
    out = tmp_path / "tune"
    assert report.main(["--tracking-uri", store.uri, "--experiment", "vae-bench-tune", "--out", str(out),
                        "--date", "2024-01-01"]) == 0
    assert rows(section((out / "report.md").read_text(), "Tuning studies"), "tiny")


def test_history_fetch_methods_agree(store: Store) -> None:
    client = open_store(store.uri)
    ids = sorted(report_data.load(client, sweep=SWEEP).main["run_id"])
    bulk = report_data.fetch_histories(client, ids, report_data.HISTORY_METRICS, method="bulk")
    threads = report_data.fetch_histories(client, ids, report_data.HISTORY_METRICS, method="threads")
    assert len(bulk) == 8 * 2 * len(report_data.HISTORY_METRICS) + 4
    assert bulk.equals(threads)


@pytest.mark.parametrize("args, needle", [
    (["--sweep", "no-such-sweep"], "no runs of sweep 'no-such-sweep'"),
    (["--experiment", "broken"], "has no finished runs to report (1 FAILED)"),
    (["--sweep", SWEEP, "--date", "yesterday"], "--date 'yesterday' is not a date"),
    (["--sweep", SWEEP, "--out", "/dev/null/report"], "cannot write the report into /dev/null/report"),
])
def test_bad_input_exits_2_with_one_line(store: Store, args: list[str], needle: str,
                                         capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main_guard(report.main, report.PROG)(["--tracking-uri", store.uri, "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("python -m bench.report: error: ") and needle in err, err
    assert not (tmp_path / "r" / "report.md").exists()


def test_unknown_experiment_from_the_command_line(store: Store, tmp_path: Path) -> None:
    proc = run_cli("bench.report", "--tracking-uri", store.uri, "--experiment", "nope", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "no experiment named 'nope'" in proc.stderr and "broken" in proc.stderr  # names what exists


def test_a_resumed_runs_new_target_wins_over_its_epochs_param() -> None:
    """A resumed run's new --epochs is a tag (params cannot change); the report takes it as the run's target."""
    raw = pd.DataFrame({
        "run_id": ["a", "b"], "status": ["FINISHED"] * 2, "experiment": ["vae-bench"] * 2,
        "tags.mlflow.runName": ["sgvb_b-z2-L1-s1", "sgvb_b-z2-L1-s2"],
        "params.variant": ["sgvb_b"] * 2, "params.latent": ["2"] * 2, "params.seed": ["1", "2"],
        "params.epochs": ["10", "20"], "tags.bench.epochs_target": [None, "10"],  # b started for 20, resumed to 10
        "metrics.test_loss": [140.0, 141.0],
    })
    runs = report_data.tidy(raw)[0].set_index("run_id")
    assert list(runs.loc[["a", "b"], "epochs"]) == ["10", "10"]
    assert runs.loc["a", "label"] == runs.loc["b", "label"] == "sgvb_b"  # one configuration, averaged together
