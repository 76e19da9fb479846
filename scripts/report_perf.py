"""Time `bench.report` on a synthetic store of many runs (the performance check of issue 5).

    python scripts/report_perf.py [--runs 500] [--epochs 10] [--dir /tmp/vae-bench-perf]

Builds (once) a SQLite store whose runs carry the params, tags (provenance too) and per-epoch metrics that
bench.run logs, the IWAE family's test NLL and active units,
with synthetic values written directly through MlflowClient (no training, no artifacts), then times the
data loading (search_runs + metric histories) and a full report.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlflow.entities import Metric, Param, RunTag  # noqa: E402

from bench.cli import quiet_libraries  # noqa: E402
from bench.tracking.names import GIT_COMMIT_TAG, GIT_DIRTY_TAG, SWEEP_TAG  # noqa: E402
from bench.tracking.store import get_or_create_experiment, open_store  # noqa: E402

VARIANTS = [("sgvb_a", "sgvb_a", 1, "bernoulli"), ("sgvb_b", "sgvb_b", 1, "bernoulli"),
            ("sgvb_b_l5", "sgvb_b", 5, "bernoulli"), ("sgvb_b_gauss", "sgvb_b", 1, "gaussian"),
            ("iwae_k5", "iwae", 5, "bernoulli"), ("iwae_dreg_k5", "iwae_dreg", 5, "bernoulli"),
            ("iwae_stl_k5", "iwae_stl", 5, "bernoulli")]


def build(uri: str, runs: int, epochs: int) -> None:
    client = open_store(uri)
    exp = get_or_create_experiment(client, "perf")
    rng = random.Random(0)
    combos = [(v, z, s) for v in VARIANTS for z in (2, 10, 20) for s in range(1, 1000)]
    combos.sort(key=lambda c: (c[2], c[0][0], c[1]))
    for variant, latent, seed in combos[:runs]:
        name, est, samples, dec = variant
        run = client.create_run(exp, run_name=f"{name}-z{latent}-L{samples}-s{seed}",
                                tags={SWEEP_TAG: "perf", GIT_COMMIT_TAG: "0" * 40, GIT_DIRTY_TAG: "false"})
        params = {"variant": name, "estimator": est, "samples": samples, "decoder": dec, "hidden": 400,
                  "latent": latent, "epochs": epochs, "batch_size": 128, "lr": 0.001, "seed": seed,
                  "device": "cpu", "precision": "fp32", "binarize": "none", "limit_train": "None",
                  "data": "mnist", "data_digest": "f85aa589"}
        if dec == "gaussian":
            params |= {"gaussian_variance": 0.01, "learn_variance": False}
        metrics = []
        for e in range(1, epochs + 1):
            recon = 80 + 70 / e + rng.gauss(0, 1) + (20 - latent)
            kld = 25 - 11 / e + rng.gauss(0, 0.3)
            vals = {"train_loss": recon + kld, "train_recon": recon, "train_kld": kld,
                    "test_loss": recon + kld - 1, "test_recon": recon - 1.2, "test_kld": kld + 0.2,
                    "test_mse": 0.03 + 0.02 / e, "epoch_seconds": 3 + rng.random(),
                    "train_samples_per_second": 20000 + 100 * rng.random()}
            metrics += [Metric(k, v, 1_700_000_000_000 + e, e) for k, v in vals.items() if math.isfinite(v)]
        if est.startswith("iwae"):  # the final evaluation the IWAE comparison reads
            params["nll_samples"] = 1000
            metrics += [Metric("test_nll", recon + kld - 3, 1_700_000_000_100, epochs),
                        Metric("active_units", float(latent), 1_700_000_000_100, epochs)]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()],
                         tags=[RunTag("mlflow.runName", run.info.run_name)])
        client.set_terminated(run.info.run_id, "FINISHED")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--dir", default="/tmp/vae-bench-perf")
    args = p.parse_args()
    quiet_libraries()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    if not (folder / "built").exists():
        t0 = time.perf_counter()
        build(uri, args.runs, args.epochs)
        (folder / "built").write_text(str(args.runs))
        print(f"built {args.runs} runs in {time.perf_counter() - t0:.1f} s")
    from bench import report
    from bench.reporting import data as report_data

    client = open_store(uri)
    for method in ("bulk", "threads"):
        t0 = time.perf_counter()
        data = report_data.load(client, experiment="perf", sweep=None, history_method=method)
        print(f"load ({method}): {len(data.runs)} runs, {len(data.history)} history rows "
              f"in {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    code = report.main(["--tracking-uri", uri, "--experiment", "perf", "--out", str(folder / "report")])
    print(f"full report (exit {code}): {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
