"""Every name the suite gives things in MLflow, in one place: experiments, tags, artifacts.

Readers (reports, the grid, tests) select runs by these, so they are part of the contract: change one and
old stores stop matching.
"""

from __future__ import annotations

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "vae-bench"  # bench.run, bench.grid
TUNE_EXPERIMENT = "vae-bench-tune"  # bench.tune: tuning runs (many, some pruned, chosen on validation) apart

# Experiment descriptions (NOTE_TAG), set when an experiment is created
EXPERIMENT_NOTES = {
    DEFAULT_EXPERIMENT: "VAE variants on MNIST trained by bench.run and bench.grid: one run per variant, latent size "
                        "and seed, compared on test -ELBO (test_loss). Grid runs carry bench.sweep.",
    TUNE_EXPERIMENT: "Optuna tuning by bench.tune: one parent run per study (bench.role=study) and one nested run "
                     "per trial, scored on validation loss.",
}
OTHER_EXPERIMENT_NOTE = "VAE variants on MNIST trained by vae-bench (bench.run, bench.grid or bench.tune)."

# Tags on runs
SWEEP_TAG = "bench.sweep"  # runs of one grid sweep share this tag's value; reports select by it
MEMBER_TAG = "bench.in_sweep.{}"  # "true" on every run of the sweep: those it made and those it reused (before
# issue 19 only on reused ones, so readers take bench.sweep too); sweep_filter() is the one filter that finds them
FAILURE_TAG = "bench.failure"  # why a run ended FAILED or KILLED (cleared when it is resumed)
COMPILE_TAG = "bench.compile_eager"  # --compile: the epoch from which the step trained eagerly, and why
EPOCHS_TAG = "bench.epochs_target"  # a resumed run's new --epochs (params cannot change); reports prefer it
STUDY_TAG = "bench.study"  # on a study's parent run and on every trial's run: the study's name
ROLE_TAG = "bench.role"  # "study" (a tuning study's parent run), "trial", or "sweep" (a grid sweep's parent)
TRIAL_TAG = "bench.trial"  # the Optuna trial number of a trial's run
PRUNED_TAG = "bench.pruned_epoch"  # the epoch at which the pruner stopped a trial
SETTING_TAG = "bench.{}.step{}"  # the setting an evaluation at a step used, e.g. bench.nll_samples.step10 = "1000"
# (a list "1000,5000" when that step was evaluated again: the i-th value of its metric came from the i-th setting)
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: a nested run's parent
NOTE_TAG = "mlflow.note.content"  # MLflow's own: the description shown on a run's or experiment's page
# Provenance: MLflow's own context tags, shown on a run's page, and whether the code had uncommitted changes
SOURCE_NAME_TAG = "mlflow.source.name"
SOURCE_TYPE_TAG = "mlflow.source.type"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
USER_TAG = "mlflow.user"
GIT_DIRTY_TAG = "bench.git_dirty"  # "true" when the working tree differed from GIT_COMMIT_TAG's commit
OWNER_TAG = "bench.owner.{}"  # one per process that holds (or is claiming) the run: bench.tracking.ownership
NLL_TAG = "bench.nll_samples"  # bench.run's --nll-samples: the final evaluation a resume does again
MODEL_EPOCH_TAG = "bench.epoch"  # on a logged model: the epoch whose parameters it holds
ANALYSIS_TAG = "bench.analysis"  # a run nested under a training run: which analysis (bench.tracking.analyses)
ANALYSIS_OF_TAG = "bench.analysis_of"  # on such a run: the training run's id (also mlflow.parentRunId)
# Analyses (ANALYSIS_TAG's values; an analysis run is named "<run name> · <analysis>")
GRADVAR_ANALYSIS = "gradient variance"  # bench.evaluate --gradient-variance
SNR_ANALYSIS = "SNR study"  # bench.snr
TRAINING_SNR_ANALYSIS = "SNR during training"  # bench.run --snr-every's per-epoch curves (snr/train/...)



def sweep_filter(sweep: str) -> str:
    """The MLflow filter (runs table search box, mlflow.search_runs) of every run of a sweep, reused ones included:
    an exact match on one tag per sweep, since a run may belong to several sweeps and LIKE has no escape for _."""
    return f"tags.`{MEMBER_TAG.format(sweep)}` = 'true'"


# Artifacts
CHECKPOINT = "checkpoint/checkpoint.pt"
MODEL_NAME = "model"
