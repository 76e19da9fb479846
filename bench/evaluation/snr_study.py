"""python -m bench.snr: the SNR study (bench.evaluation.snr) at a tracked run's parameters, logged into the run's
analysis run "SNR study" (bench.tracking.analyses: nested under it, so that its Model metrics tab keeps opening on
the loss curves; the training run itself is not written, its status stays as it was).

Logged: metrics at the run's last epoch, snr/<part>/<estimator>/K<k> and
snr/norm/..., the slopes snr/slope[_tail][_low|_high]/<part>/<estimator>; params snr_images (M), snr_repeats (R),
snr_k_grid, snr_seed; artifacts snr/snr.csv (every K, every jackknife replicate), snr/slopes.csv, snr/snr.md (the
slopes beside the papers' predictions) and snr/snr_vs_k.png. ``--out DIR`` also writes those files to DIR.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import progs
from bench.errors import UserError
from bench.evaluation import snr
from bench.evaluation.run_evaluation import open_run
from bench.tracking.analyses import analysis_run, find_analysis_run
from bench.tracking.names import SNR_ANALYSIS

PROG = progs.SNR
ARTIFACT_DIR = "snr"


def settings_params(images: int, repeats: int, ks: list[int], seed: int) -> dict[str, str]:
    return {"snr_images": str(images), "snr_repeats": str(repeats), "snr_k_grid": ",".join(map(str, ks)),
            "snr_seed": str(seed)}


def study_run(args: argparse.Namespace) -> int:
    """What ``python -m bench.snr`` does with its arguments."""
    if args.repeats < snr.GROUPS:
        raise UserError(f"--repeats must be at least {snr.GROUPS} (the jackknife's groups), got {args.repeats}")
    ks = sorted(args.k_grid)
    if len(ks) < 2:
        raise UserError(f"--k-grid needs at least two values of K to fit a slope, got {args.k_grid}")
    client, run, model, _, test_x = open_run(args.tracking_uri, args.run_id, args.device, args.data_dir)
    params = settings_params(args.images, args.repeats, ks, args.seed)
    existing = find_analysis_run(client, args.run_id, SNR_ANALYSIS)
    held = client.get_run(existing).data.params if existing else run.data.params  # a study from before: the run's
    have = {k: held[k] for k in params if k in held}
    if any(have[k] != params[k] for k in have):
        raise UserError(f"run {args.run_id} already holds an SNR study with other settings ({have}); "
                        "MLflow params cannot change: study a copy of the run, or repeat those settings")
    if args.images > len(test_x):
        raise UserError(f"--images {args.images} is more than the {len(test_x)} test images")
    x = test_x[:args.images]
    p = run.data.params
    where = (f"run {run.info.run_name} ({args.run_id[:8]}), latent {p.get('latent')}, {p.get('epochs')} epochs, "
             f"binarize={p.get('binarize', 'none')}")
    history = client.get_metric_history(args.run_id, "train_loss")
    step = max((m.step for m in history), default=0)
    print(f"SNR study of {where}: M = {args.images} test images, R = {args.repeats} draws, K in {ks}")
    t0 = time.perf_counter()
    table = snr.measure(model, x, ks, args.repeats, args.seed,
                        log=lambda s: print(f"  {s}, {time.perf_counter() - t0:.0f} s", flush=True))
    seconds = time.perf_counter() - t0
    fits = snr.slopes(table)
    settings = (f"M = {args.images} test images (the first, binarize={p.get('binarize', 'none')} as trained), "
                f"R = {args.repeats} draws per estimator and K, K in {{{', '.join(map(str, ks))}}}, seed {args.seed}; "
                f"at the parameters after epoch {step}. {seconds:.0f} s.")
    text = snr.markdown(fits, where, settings)
    tracker = analysis_run(client, args.run_id, SNR_ANALYSIS)
    try:
        with tempfile.TemporaryDirectory(prefix="vae-bench-snr-") as tmp:
            folder = Path(tmp)
            files = [folder / "snr.csv", folder / "slopes.csv", folder / "snr.md", folder / "snr_vs_k.png"]
            table.to_csv(files[0], index=False)
            fits.to_csv(files[1], index=False)
            files[2].write_text(text)
            snr.figure(table, where, files[3])
            tracker.log_new_params(params)
            tracker.log_metrics(snr.metrics(table, fits), step=step)
            for f in files:
                tracker.log_artifact(f, ARTIFACT_DIR)
            if args.out:
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                for f in files:
                    shutil.copy(f, out / f.name)
    except BaseException as e:
        tracker.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    tracker.finish()
    print(text)
    print(f"{seconds:.0f} s; logged to run {tracker.run_id} ({run.info.run_name} · {SNR_ANALYSIS}, nested under run "
          f"{args.run_id}) under snr/")
    return 0


def main_args(argv: list[str] | None, parser: argparse.ArgumentParser) -> int:
    try:
        return study_run(parser.parse_args(argv))
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; nothing of the study was logged", file=sys.stderr)
        return 130
