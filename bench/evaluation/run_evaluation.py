"""Evaluating a trained model like the papers, into its run: what bench.evaluate does, and what bench.run does
after its last epoch.

Always: ``active_units`` (Burda et al.'s rule) and the KL per latent dimension (evaluation/kl_per_dim.*);
for 2-D latents the test set's scatter and the 20x20 learned manifold. With K > 0 importance samples,
``test_nll`` (the K-sample IWAE bound, bench.evaluation.nll) and ``test_nll_stderr``, with K as the param
``nll_samples`` (the first K) and the tag ``bench.nll_samples.step<N>`` (every K used at that step). With
gradient variance, gradvar/..., gradsnr/... and gradvar_ratio/... for every estimator (bench.evaluation.gradvar),
evaluation/gradvar.* and the tags bench.gradvar_*.step<N>: in bench.evaluate, into the training run's analysis run
"gradient variance" (bench.tracking.analyses), so that the training run's Model metrics tab keeps opening on its
loss curves (MLflow 3.17 puts slash-named sections first).
The test set is binarised as the run's training was (its ``binarize`` param). Only MlflowClient calls
write to the run, so its status (FINISHED, FAILED, KILLED) stays as it was.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench import progs
from bench.core import interrupts
from bench.core.config import TrainConfig
from bench.core.data import load_mnist, loading_mnist
from bench.core.devices import resolve_device
from bench.core.progress import stage
from bench.core.splits import prepare_test
from bench.errors import UserError, first_line, out_of_memory
from bench.evaluation import defaults, gradvar, latents, likelihood_study
from bench.evaluation.nll import estimate_nll
from bench.tracking.analyses import analysis_run
from bench.tracking.lookup import get_run
from bench.tracking.mlflow_tracker import MlflowTracker
from bench.tracking.names import GRADVAR_ANALYSIS, MODEL_EPOCH_TAG, MODEL_NAME
from bench.tracking.ownership import Lease
from bench.tracking.store import browse_hint, fluent_tracking_uri, open_store, ui_address
from bench.tracking.tracker import NullTracker, Tracker

PROG = progs.EVALUATE
ARTIFACT_DIR = "evaluation"
DEFAULT_NLL_SAMPLES = defaults.NLL_SAMPLES


def evaluate_model(model: nn.Module, test_x: Tensor, test_y: Tensor, tracker: Tracker, step: int,
                   nll_samples: int = 0, gradient_variance: bool = False, repeats: int = gradvar.REPEATS,
                   progress: bool = False, log: Callable[[str], None] = print,
                   gradvar_tracker: Callable[[], Tracker] | None = None) -> dict[str, float]:
    """Compute, log to ``tracker`` (metrics at ``step``, files under evaluation/) and return the metrics. The
    gradient variance goes to ``gradvar_tracker()`` (opened once the other results are logged) if given."""
    model.eval()
    metrics: dict[str, float] = {}
    settings: dict[str, int] = {}  # params/tags, not charts: the K of each test_nll, the R of each variance
    with tempfile.TemporaryDirectory(prefix="vae-bench-eval-") as tmp:
        folder = Path(tmp)
        mu, logvar = latents.encoder_moments(model, test_x)
        table = latents.kl_table(mu, logvar)
        metrics["active_units"] = float(int(table["active"].sum()))
        files = latents.save_kl_artifacts(table, folder)
        if model.latent == 2:
            files.append(latents.save_latent_scatter(mu, test_y, folder / "latent_scatter.png"))
            files.append(latents.save_manifold(model, folder / "latent_manifold.png"))
        if nll_samples > 0:
            result = estimate_nll(model, test_x, nll_samples, progress=progress)
            metrics.update(result.metrics())
            settings["nll_samples"] = nll_samples
            log(f"test NLL {result.nll:.3f} +- {result.stderr:.3f} nats ({nll_samples} importance samples, "
                f"{len(test_x)} images)")
        log(f"active units {int(metrics['active_units'])} of {model.latent}; "
            f"KL per dimension in {ARTIFACT_DIR}/kl_per_dim.md")
        _log_all(tracker, metrics, settings, files, step)
        if gradient_variance:
            target = gradvar_tracker() if gradvar_tracker is not None else tracker
            with stage(f"gradient variance of every estimator, {repeats} noise draws each", False, log):
                gmetrics, gparams, gfiles, text = gradvar.evaluate_gradvar(model, test_x, repeats, folder,
                                                                           progress=progress)
            log(text)
            # settings are params and tags, never charts (GRADVAR_CONTRACT.md); they sit with their metrics
            _log_all(target, gmetrics, gparams, gfiles, step)
            metrics.update(gmetrics)
    return metrics


def _log_all(tracker: Tracker, metrics: dict[str, float], settings: dict[str, int], files: list[Path],
             step: int) -> None:
    tracker.log_metrics(metrics, step=step)
    tracker.log_settings(settings, step)
    for path in files:
        tracker.log_artifact(path, ARTIFACT_DIR)


def final_evaluation(model: nn.Module, variant: Any, cfg: TrainConfig, data: Any, tracker: Tracker,
                     nll_samples: int = 0, progress: bool | None = None) -> dict[str, float]:
    """Called by bench.run after the last epoch, once the model is logged: active units, KL per dimension,
    the 2-D pictures, and (nll_samples > 0) the test NLL, as metrics at step cfg.epochs. A run that holds out
    a validation split (tuning) never looks at the test set, so it gets nothing here."""
    if getattr(cfg, "validation", 0):
        return {}
    test_x = prepare_test(data, cfg, torch.device(cfg.device))
    progress = sys.stderr.isatty() if progress is None else progress
    return evaluate_model(model, test_x, data.test_y.to(cfg.device), tracker, step=cfg.epochs,
                          nll_samples=nll_samples, progress=progress)


def load_run_model(client: Any, run_id: str) -> nn.Module:
    """The run's logged model (bench.tracking.MODEL_NAME), or a UserError saying why there is none."""
    return run_model(client, run_id)[0]


def run_model(client: Any, run_id: str) -> tuple[nn.Module, int | None]:
    """The run's logged model and the epoch whose parameters it holds (None for a model logged before models
    were tagged with it), or a UserError saying why there is none."""
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    # models:/ and runs:/ URIs resolve through the fluent API's tracking URI only (download_artifacts'
    # tracking_uri is not used for MLflow 3's logged models).
    try:
        models = MlflowTracker(client, run_id).logged_models()
        uri = f"models:/{models[0].model_id}" if models else f"runs:/{run_id}/{MODEL_NAME}"
        with fluent_tracking_uri(client.tracking_uri):
            model = mlflow.pytorch.load_model(uri, map_location="cpu")
    except (MlflowException, OSError, IndexError) as e:
        raise UserError(f"run {run_id} has no logged model ({first_line(e, 120)}); "
                        "evaluate a run that finished training") from None
    epoch = models[0].tags.get(MODEL_EPOCH_TAG) if models else None
    return model, None if epoch is None else int(epoch)


def open_run(tracking_uri: str | None, run_id: str, device: str, data_dir: str | None) -> tuple[
        Any, Any, nn.Module, Any, Tensor]:
    """(client, run, its model on the device, MNIST, the test images binarised as the run was trained), or a
    UserError naming what is wrong (no such run, no model, other data)."""
    client = open_store(tracking_uri, existing=True)
    run = get_run(client, run_id)
    params = run.data.params
    device = resolve_device(device)
    cfg = TrainConfig(binarize=params.get("binarize", "none"), device=device)
    model = run_model(client, run_id)[0].to(device)
    data = load_mnist(data_dir)
    if params.get("data_digest", data.digest) != data.digest:
        raise UserError(f"run {run_id} was trained on MNIST with digest {params['data_digest']}, but "
                        f"{data.source} has digest {data.digest}; give --data-dir the run's data")
    return client, run, model, data, prepare_test(data, cfg, torch.device(device))


def evaluate_run(args: argparse.Namespace) -> int:
    """What ``python -m bench.evaluate`` does with its arguments. The run is held for the whole evaluation (a
    training or a resume of it meanwhile is refused, and waits with --wait); its status is never written."""
    if args.gradient_variance and args.repeats < 2:
        raise UserError(f"--repeats must be at least 2 to measure a variance, got {args.repeats}")
    with loading_mnist(args.data_dir) as mnist:
        client = open_store(args.tracking_uri, existing=True)
        run = get_run(client, args.run_id)
        data = mnist()
    params = run.data.params
    if params.get("data_digest", data.digest) != data.digest:
        raise UserError(f"run {args.run_id} was trained on MNIST with digest {params['data_digest']}, but "
                        f"{data.source} has digest {data.digest}; give --data-dir the run's data")
    device = resolve_device(args.device)
    cfg = TrainConfig(binarize=params.get("binarize", "none"), device=device)
    # A subset's numbers would sit under the full test set's names (test_nll, active_units): printed only, and
    # a check that logs nothing needs no hold on the run.
    lease = None if args.limit_test else Lease(client, args.run_id, "evaluating")
    analyses: list[MlflowTracker] = []
    interrupts.set_phase(interrupts.OWNING)
    try:
        if lease is not None:
            lease.claim(wait=args.wait)
        print(f"loading the model of run {args.run_id}", flush=True)
        model, epoch = run_model(client, args.run_id)
        if epoch is None:  # a model from before models were tagged: the run's last epoch
            epoch = max((m.step for m in client.get_metric_history(args.run_id, "train_loss")), default=0)
        model = model.to(device)
        test_x = prepare_test(data, cfg, torch.device(device))
        test_y = data.test_y.to(device)
        if args.limit_test:
            test_x, test_y = test_x[:args.limit_test], test_y[:args.limit_test]
        status = client.get_run(args.run_id).info.status
        print(f"evaluating run {args.run_id} ({run.info.run_name}, {status}): its model of epoch {epoch}, on "
              f"{len(test_x)} test images, binarize={cfg.binarize}; results at step {epoch}", flush=True)
        tracker: Tracker = MlflowTracker(client, args.run_id) if lease is not None else NullTracker()
        if args.limit_test:
            print(f"--limit-test: a check on {len(test_x)} of {len(data.test_x)} test images, printed and not "
                  "logged")

        def gradvar_run() -> Tracker:  # opened when the measurement starts: a crash before leaves none behind
            if lease is None:
                return NullTracker()
            analyses.append(analysis_run(client, args.run_id, GRADVAR_ANALYSIS))
            return analyses[-1]

        evaluate_model(model, test_x, test_y, tracker, epoch, nll_samples=args.nll_samples,
                       gradient_variance=args.gradient_variance, repeats=args.repeats,
                       progress=not args.no_progress and sys.stderr.isatty(), gradvar_tracker=gradvar_run)
        for a in analyses:
            a.finish()
        if likelihood_study.requested(args):
            likelihood_study.run_from_args(args, model, test_x, client, tracker, epoch, lease is not None)
    except Exception as e:
        _end(analyses, "FAILED")
        if not out_of_memory(e):
            raise
        raise UserError(f"evaluating run {args.run_id} ran out of memory ({first_line(e, 120)}); give a smaller "
                        "--nll-samples or --repeats, or evaluate where there is more memory") from None
    except KeyboardInterrupt as e:
        interrupts.set_phase(interrupts.ENDING)
        _end(analyses, "KILLED")
        print(f"\n{PROG}: interrupted ({e or 'SIGINT'}); run {args.run_id} keeps what was logged before",
              file=sys.stderr)
        return 130
    finally:
        if lease is not None:
            lease.release()
    if lease is not None:
        exp = run.info.experiment_id
        print(f"run {args.run_id} evaluated; {browse_hint(client, exp, args.run_id)}")
        for a in analyses:
            print(f"its {GRADVAR_ANALYSIS}: run {a.run_id}, {ui_address(client, exp, a.run_id)}")
    return 0


def _end(analyses: list[MlflowTracker], status: str) -> None:
    """End the analysis runs opened so far as ``status``, without hiding the error that ends them."""
    for a in analyses:
        try:
            a.finish(status)
        except Exception as e:  # the store itself failing: the error in hand says more
            print(f"{PROG}: could not mark analysis run {a.run_id} {status} ({first_line(e, 120)})", file=sys.stderr)
