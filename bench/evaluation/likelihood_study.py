"""``bench.evaluate --ais [--bdmc] [--gaps] [--nll-ladder]``: likelihoods you can trust, logged into a run.

On the training run, at the model's epoch (final numbers, beside test_nll): ``test_nll_ais`` and
``test_nll_ais_stderr`` (-mean of forward AIS over the first N test images, and its standard error over the images),
``test_nll_ais_mc_stderr`` (the estimator's own noise over the chains, delta method), ``bdmc_gap`` and
``bdmc_gap_stderr`` (mean upper - lower bound on M images simulated from the model). The settings (T, C, N,
schedule, start, leapfrog steps, seed, M) are params and tags (Tracker.log_settings), never metrics.

On the analysis run "likelihood" under it (bench.tracking.analyses), at the same step: ``gap/amortization``,
``gap/approximation``, ``elbo/encoder``, ``elbo/optimised`` (each with ``_stderr``; bench.evaluation.gaps),
``nll_ladder/K<k>`` and ``nll_ladder/K<k>_stderr`` (-mean L_K on the same N images), and the per-image values as
likelihood/per_image.csv (and likelihood/bdmc.csv).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor, nn

from bench.core import interrupts
from bench.evaluation import defaults
from bench.evaluation import gaps as gaps_mod
from bench.evaluation.ais import AISSettings, ais_log_likelihood, bdmc
from bench.evaluation.nll import iwae_log_likelihood
from bench.tracking.tracker import NullTracker, Tracker

ANALYSIS = "likelihood"
ARTIFACT_DIR = "likelihood"
LADDER = defaults.LADDER
DEFAULT_BDMC_IMAGES = defaults.BDMC_IMAGES
parse_images = defaults.parse_images  # --ais-images


@dataclass(frozen=True)
class LikelihoodOptions:
    ais: AISSettings = field(default_factory=AISSettings)
    images: int = 1000  # the first N test images
    bdmc_images: int = 0  # 0: no BDMC
    gaps: bool = False
    ladder: tuple[int, ...] = ()
    gap_steps: int = gaps_mod.OPT_STEPS

    def settings(self) -> dict[str, object]:
        out = {**self.ais.params(), "ais_images": self.images}
        if self.bdmc_images:
            out["bdmc_images"] = self.bdmc_images
        if self.gaps:
            out.update(gap_opt_steps=self.gap_steps, gap_elbo_samples=gaps_mod.ELBO_SAMPLES)
        return out


def _mean_se(v: Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def evaluate_likelihoods(model: nn.Module, test_x: Tensor, opts: LikelihoodOptions, tracker: Tracker, step: int,
                         analysis: Callable[[], Any] | None = None, progress: bool = False,
                         log: Callable[[str], None] = print) -> dict[str, float]:
    """Run what ``opts`` asks on the first ``opts.images`` of test_x; log to ``tracker`` (the training run) and to
    the tracker ``analysis()`` returns (made on first use; None: nothing logged there). Returns all metrics.
    On Ctrl-C or an error the analysis run is ended KILLED or FAILED; what was logged before stays."""
    model.eval()
    x = test_x[:opts.images]
    n = len(x)
    main: dict[str, float] = {}
    extra: dict[str, float] = {}
    with interrupts.critical():
        tracker.log_settings(opts.settings(), step)
    ais = ais_log_likelihood(model, x, opts.ais, progress=progress, desc="AIS on the test images")
    main.update(test_nll_ais=ais.nll, test_nll_ais_stderr=ais.stderr, test_nll_ais_mc_stderr=ais.mc_stderr)
    with interrupts.critical():
        tracker.log_metrics(dict(main), step=step)
    log(f"test NLL by AIS {ais.nll:.3f} +- {ais.stderr:.3f} nats over {n} images (estimator noise "
        f"{ais.mc_stderr:.3f}; T={opts.ais.steps}, C={opts.ais.chains}, acceptance {ais.accept:.2f})")
    per_image = pd.DataFrame({"image": range(n), "log_px_ais": ais.log_px.numpy(),
                              "log_px_ais_mc_var": ais.mc_var.numpy()})
    bdmc_table = None
    if opts.bdmc_images:
        b = bdmc(model, opts.bdmc_images, opts.ais, progress=progress, device=x.device)
        m = {"bdmc_gap": b.gap, "bdmc_gap_stderr": b.gap_stderr}
        main.update(m)
        with interrupts.critical():
            tracker.log_metrics(m, step=step)
        bdmc_table = pd.DataFrame({"image": range(len(b.lower)), "lower": b.lower.numpy(), "upper": b.upper.numpy()})
        log(f"BDMC gap {b.gap:.3f} +- {b.gap_stderr:.3f} nats per image on {len(b.lower)} simulated images "
            "(upper - lower bound on log p(x) at these AIS settings)")
    with interrupts.critical():  # a signal while the analysis run is made waits: it is then ended KILLED below
        run = analysis() if analysis is not None else None  # None: a --limit-test check, printed only
    child: Tracker = run if run is not None else NullTracker()
    try:
        with interrupts.critical():
            child.log_settings(opts.settings(), step)
        if opts.gaps:
            g = gaps_mod.gaps(model, x, ais.log_px, steps=opts.gap_steps, progress=progress)
            extra.update(g.metrics())
            with interrupts.critical():  # never a write to the store cut in half
                child.log_metrics(g.metrics(), step=step)
            per_image["elbo_encoder"] = g.elbo_encoder.numpy()
            per_image["elbo_optimised"] = g.elbo_optimised.numpy()
            log(f"gaps: amortization {extra['gap/amortization']:.3f} +- {extra['gap/amortization_stderr']:.3f}, "
                f"approximation {extra['gap/approximation']:.3f} +- {extra['gap/approximation_stderr']:.3f} nats "
                f"(ELBO[q_enc] {extra['elbo/encoder']:.3f}, ELBO[q*] {extra['elbo/optimised']:.3f})")
        for k in opts.ladder:
            lk = iwae_log_likelihood(model, x, k, progress=progress)
            mean, se = _mean_se(lk)
            m = {f"nll_ladder/K{k}": -mean, f"nll_ladder/K{k}_stderr": se}
            extra.update(m)
            with interrupts.critical():
                child.log_metrics(m, step=step)
            per_image[f"L_K{k}"] = lk.cpu().numpy()
            log(f"NLL ladder K={k}: {-mean:.3f} +- {se:.3f} (AIS - L_K {float((ais.log_px - lk.cpu()).mean()):+.3f})")
        with tempfile.TemporaryDirectory(prefix="vae-bench-likelihood-") as tmp, interrupts.critical():
            path = Path(tmp) / "per_image.csv"
            per_image.to_csv(path, index=False)
            child.log_artifact(path, ARTIFACT_DIR)
            if bdmc_table is not None:
                bdmc_table.to_csv(Path(tmp) / "bdmc.csv", index=False)
                child.log_artifact(Path(tmp) / "bdmc.csv", ARTIFACT_DIR)
    except KeyboardInterrupt:
        if run is not None:
            with interrupts.critical():
                run.finish("KILLED")
        raise
    except BaseException:
        if run is not None:
            with interrupts.critical():
                run.finish("FAILED")
        raise
    if run is not None:
        with interrupts.critical():
            run.finish()
    return {**main, **extra}





def requested(args: Any) -> bool:
    return any(getattr(args, k, False) for k in ("ais", "bdmc", "gaps", "nll_ladder"))


def run_from_args(args: Any, model: nn.Module, test_x: Tensor, client: Any, tracker: Tracker, step: int,
                  logged: bool) -> dict[str, float]:
    """What bench.evaluate's --ais, --bdmc, --gaps and --nll-ladder ask for (``logged`` False: print only)."""
    import sys

    from bench.errors import UserError
    from bench.tracking.analyses import analysis_run

    try:
        settings = AISSettings(steps=args.ais_steps, chains=args.ais_chains, leapfrog=args.ais_leapfrog,
                               start=args.ais_start, seed=args.ais_seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.ais_images > len(test_x):
        raise UserError(f"--ais-images {args.ais_images} is more than the {len(test_x)} test images evaluated")
    opts = LikelihoodOptions(ais=settings, images=args.ais_images, bdmc_images=args.bdmc, gaps=args.gaps,
                             ladder=LADDER if args.nll_ladder else (), gap_steps=args.gap_steps)
    analysis = (lambda: analysis_run(client, args.run_id, ANALYSIS)) if logged else None
    return evaluate_likelihoods(model, test_x, opts, tracker, step, analysis,
                                progress=not args.no_progress and sys.stderr.isatty())
