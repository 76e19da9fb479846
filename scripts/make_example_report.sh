#!/usr/bin/env bash
# Generate reports/example/ from a real sweep: the core variants (and the IWAE family, where registered) x latent
# sizes 2, 10, 20 x seeds 1-5, trained on all 60,000 images into a store of its own, evaluated (test NLL on every
# run, gradient variance on every seed), the likelihoods measured (AIS, the gap split, the NLL ladder, BDMC) on the
# IWAE family and the core variants at IWAE_LATENTS and checked (scripts/check_likelihoods.py), then reported with
# seed-paired intervals. Exits 1 if the likelihood check fails (the report is written all the same).
#
#   WORKERS=2 scripts/make_example_report.sh            # the committed example: 60 core runs + 15 IWAE, 5 epochs
#   QUICK=1 scripts/make_example_report.sh              # a rehearsal: 1 epoch on 300 images, /tmp; about an hour
#                                                       # at load 5-10 here, 45 min of it the 28 likelihood evaluations
#
# Settings (environment variables, defaults in brackets):
#   STORE          folder of the MLflow store [/tmp/vae-bench-example]; reusing it resumes the sweep
#   OUT            report folder [reports/example]
#   VARIANTS       [sgvb_a,sgvb_b,sgvb_b_l5,sgvb_b_gauss]   LATENTS [2,10,20]   SEEDS [1,2,3,4,5]
#   IWAE_VARIANTS  a second grid, when `bench.run --list` has them [iwae_k5,iwae_dreg_k5,iwae_stl_k5]
#   IWAE_LATENTS   ... at these latent sizes [20; QUICK: LATENTS]
#   EPOCHS         [5]             LIMIT_TRAIN  training images [unset: all 60,000]
#   NLL_SAMPLES    importance samples K for test_nll of the core variants' runs [100]
#   IWAE_NLL_SAMPLES  ... of the IWAE family's, and of every Bernoulli run at IWAE_LATENTS so that their NLLs pair
#                  [1000: issue 12's K]; about 3 min a run on one core here
#   GRADVAR_SEEDS  runs of these seeds get bench.evaluate --gradient-variance [every seed]; empty to skip
#   GRADVAR_VARIANTS  ... and of these variants [sgvb_b: each evaluation measures every estimator (A, B, L, IWAE k,
#                  score function) at that run's parameters; about 30 s each here]; empty for every variant
#   REPEATS        noise draws per estimator for the gradient variance [100]
#   COMPARE        extra pairs for bench.report --compare, space separated [sgvb_b_l5:iwae_k5, if both are run]
#   SWEEP          the sweep id (tag bench.sweep) [example]
#   AIS_VARIANTS   variants whose runs at IWAE_LATENTS get bench.evaluate --ais --gaps --nll-ladder [VARIANTS and the
#                  IWAE family]; empty to skip that stage
#   AIS_STEPS, AIS_CHAINS, AIS_START, AIS_IMAGES  its AIS setting [1000, 4, encoder, 200: the cheaper setting, a
#                  BDMC gap under 0.1 nats per image on the seed's model (README: Likelihoods), on the first 200 test
#                  images (paired by image and seed, enough for the report's 0.2-nat differences; 1,000 would add about
#                  2 hours on 2 cores); QUICK: 20, 2, encoder, 20]
#   GAP_STEPS      Adam steps of q* per image [500; QUICK: 20]
#   BDMC_IMAGES    M, images simulated from the model for bdmc_gap [100; QUICK: 5], on the runs of
#   BDMC_SEEDS     ... these seeds [the first of SEEDS: one run per variant and latent size]; empty for none
#   WORKERS        grid workers (and parallel evaluations) sharing the sweep's Optuna storage [1]; with more than
#                  one, each gets OMP_NUM_THREADS=1 unless you set it
#   DATE           report date, YYYY-MM-DD [today]
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${QUICK:-}" ]]; then
  : "${STORE:=/tmp/vae-bench-example-quick}" "${OUT:=/tmp/vae-bench-example-quick/report}"
  : "${EPOCHS:=1}" "${LIMIT_TRAIN:=300}" "${NLL_SAMPLES:=5}" "${IWAE_NLL_SAMPLES:=5}" "${REPEATS:=2}" "${LATENTS:=2,10}" "${SEEDS:=1,2}"
  : "${IWAE_LATENTS:=$LATENTS}"
  : "${AIS_STEPS:=20}" "${AIS_CHAINS:=2}" "${AIS_IMAGES:=20}" "${GAP_STEPS:=20}" "${BDMC_IMAGES:=5}"
fi
STORE=${STORE:-/tmp/vae-bench-example}
OUT=${OUT:-reports/example}
VARIANTS=${VARIANTS:-sgvb_a,sgvb_b,sgvb_b_l5,sgvb_b_gauss}
IWAE_VARIANTS=${IWAE_VARIANTS-iwae_k5,iwae_dreg_k5,iwae_stl_k5}
LATENTS=${LATENTS:-2,10,20}
IWAE_LATENTS=${IWAE_LATENTS:-20}
SEEDS=${SEEDS:-1,2,3,4,5}
EPOCHS=${EPOCHS:-5}
LIMIT_TRAIN=${LIMIT_TRAIN:-}
NLL_SAMPLES=${NLL_SAMPLES:-100}
IWAE_NLL_SAMPLES=${IWAE_NLL_SAMPLES:-1000}
GRADVAR_SEEDS=${GRADVAR_SEEDS-$SEEDS}
GRADVAR_VARIANTS=${GRADVAR_VARIANTS-sgvb_b}
REPEATS=${REPEATS:-100}
AIS_STEPS=${AIS_STEPS:-1000}
AIS_CHAINS=${AIS_CHAINS:-4}
AIS_START=${AIS_START:-encoder}
AIS_IMAGES=${AIS_IMAGES:-200}
GAP_STEPS=${GAP_STEPS:-500}
BDMC_IMAGES=${BDMC_IMAGES:-100}
BDMC_SEEDS=${BDMC_SEEDS-${SEEDS%%,*}}
WORKERS=${WORKERS:-1}
(( WORKERS > 1 )) && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# The IWAE family is a second grid (fewer latent sizes: each of its runs costs about k times an L = 1 run).
registered=$(python -m bench.run --list | awk '{print $1}')
IWAE=""
for v in ${IWAE_VARIANTS//,/ }; do
  if grep -qx "$v" <<<"$registered"; then IWAE="${IWAE:+$IWAE,}$v"; else echo "   (variant $v not registered: left out)"; fi
done
if [[ -z "${COMPARE+x}" ]]; then  # L = 5 beside IWAE k = 5: the same number of samples
  COMPARE=""; [[ ",$VARIANTS," == *,sgvb_b_l5,* && ",$IWAE," == *,iwae_k5,* ]] && COMPARE="sgvb_b_l5:iwae_k5"
fi
SWEEP=${SWEEP:-example}
EXPERIMENT=vae-bench
mkdir -p "$STORE"
URI="sqlite:///$(cd "$STORE" && pwd)/mlflow.db"
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
limit=(); [[ -n "$LIMIT_TRAIN" ]] && limit=(--limit-train "$LIMIT_TRAIN")

grid() {  # grid VARIANTS LATENTS K: WORKERS processes share the storage beside the store and split its cells;
          # resumable: combinations already FINISHED in the store are skipped
  echo "== 1/4 training: $1 x latents $2 x seeds $SEEDS, $EPOCHS epochs, into $URI"
  local pids=() p w
  for ((w = 1; w <= WORKERS; w++)); do
    python -m bench.grid --variants "$1" --latents "$2" --seeds "$SEEDS" --epochs "$EPOCHS" "${limit[@]}" \
      --nll-samples "$3" --sweep "$SWEEP" --experiment "$EXPERIMENT" --tracking-uri "$URI" --no-progress &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || echo "   a grid worker exited with status $? (its cells are listed in the report)"; done
}
t0=$SECONDS
grid "$VARIANTS" "$LATENTS" "$NLL_SAMPLES"
[[ -n "$IWAE" ]] && grid "$IWAE" "$IWAE_LATENTS" "$IWAE_NLL_SAMPLES"
echo "   training took $((SECONDS - t0)) s"

t0=$SECONDS
if [[ -n "$GRADVAR_SEEDS" ]] && python -m bench.evaluate --help 2>/dev/null | grep -q -- --gradient-variance; then
  # The finished runs of the sweep with a seed in GRADVAR_SEEDS and no gradient variance yet.
  mapfile -t ids < <(python - "$URI" "$SWEEP" "$GRADVAR_SEEDS" "$GRADVAR_VARIANTS" <<'EOF'
import sys

import mlflow

uri, sweep, seeds = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
variants = set(filter(None, sys.argv[4].split(",")))
mlflow.set_tracking_uri(uri)
runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`bench.sweep` = '{sweep}'")
# Analysis runs (bench.analysis) carry their training run's tags: never evaluated themselves; a training run whose
# "gradient variance" analysis run holds the metrics is measured already.
kind = runs["tags.bench.analysis"] if "tags.bench.analysis" in runs else runs["run_id"].map(lambda _: None)
done = runs[(kind == "gradient variance") & runs.get("metrics.gradvar/encoder/sgvb_b", kind).notna()]
measured = set(done["tags.bench.analysis_of"]) if len(done) else set()
runs = runs[kind.isna() & ~runs["run_id"].isin(measured)]
for _, r in runs.sort_values("tags.mlflow.runName").iterrows():
    if (r["status"] == "FINISHED" and r["params.seed"] in seeds
            and (not variants or r["params.variant"] in variants)
            and r.isna().get("metrics.gradvar/encoder/sgvb_b", True)
            and r.isna().get("metrics.gradvar_encoder_sgvb_b", True)):  # the names before the GRADVAR contract
        print(r["run_id"])
EOF
  )
  echo "== 2/4 gradient variance of ${#ids[@]} runs (seeds $GRADVAR_SEEDS, $REPEATS repeats)"
  if (( ${#ids[@]} )); then
    printf '%s\n' "${ids[@]}" | xargs -P "$WORKERS" -I{} sh -c 'python -m bench.evaluate --run-id "$1" \
      --tracking-uri "$2" --nll-samples 0 --gradient-variance --repeats "$3" --no-progress | tail -n 1' _ {} "$URI" "$REPEATS"
  fi
else
  echo "== 2/4 gradient variance: skipped"
fi

# At the IWAE family's latent sizes every Bernoulli run gets its K too, so that test NLLs pair across the family,
# A vs B, L = 1 vs 5 and --compare (pairs need the same K; Gaussian runs' NLL is compared with nothing else).
mapfile -t ids < <(python - "$URI" "$SWEEP" "$IWAE_LATENTS" "$IWAE_NLL_SAMPLES" <<'EOF'
import sys

import mlflow

uri, sweep, latents, k = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
mlflow.set_tracking_uri(uri)
runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`bench.sweep` = '{sweep}'")
if "tags.bench.analysis" in runs:  # analysis runs carry their training run's tags but have no model
    runs = runs[runs["tags.bench.analysis"].isna()]
for _, r in runs.sort_values("tags.mlflow.runName").iterrows():
    # the K of the run's latest test_nll: the last entry of its NLL tag at the last epoch (bench.reporting.data)
    used = str(r.get(f"tags.bench.nll_samples.step{r['params.epochs']}")).split(",")[-1]
    if (r["status"] == "FINISHED" and r["params.decoder"] == "bernoulli" and r["params.latent"] in latents
            and used != k):
        print(r["run_id"])
EOF
)
if (( ${#ids[@]} )); then
  echo "== 2/4 test NLL with K = $IWAE_NLL_SAMPLES on ${#ids[@]} Bernoulli runs at latents $IWAE_LATENTS"
  printf '%s\n' "${ids[@]}" | xargs -P "$WORKERS" -I{} sh -c 'python -m bench.evaluate --run-id "$1" \
    --tracking-uri "$2" --nll-samples "$3" --no-progress | grep "test NLL"' _ {} "$URI" "$IWAE_NLL_SAMPLES"
fi
echo "   evaluation took $((SECONDS - t0)) s"

AIS_VARIANTS=${AIS_VARIANTS-$VARIANTS${IWAE:+,$IWAE}}
checked=0
if [[ -n "$AIS_VARIANTS" ]]; then
  t0=$SECONDS
  # The finished runs of AIS_VARIANTS at IWAE_LATENTS not measured yet (no test_nll_ais, or their "likelihood"
  # analysis run lacks the ladder's K = 1000 or a gap: an evaluation that was stopped), each with "bdmc" if it is a
  # run of BDMC_SEEDS without bdmc_gap: resumable, a second pass measures only what is missing.
  mapfile -t todo < <(python - "$URI" "$SWEEP" "$IWAE_LATENTS" "$AIS_VARIANTS" "$BDMC_SEEDS" <<'EOF'
import sys

import mlflow

uri, sweep, latents, variants, bdmc_seeds = sys.argv[1], sys.argv[2], *(a.split(",") for a in sys.argv[3:6])
mlflow.set_tracking_uri(uri)
runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`bench.sweep` = '{sweep}'")
kind = runs["tags.bench.analysis"] if "tags.bench.analysis" in runs else runs["run_id"].map(lambda _: None)
need = ["metrics.nll_ladder/K1000", "metrics.gap/amortization", "metrics.gap/approximation"]
lik = runs[kind == "likelihood"]
done = set(lik[lik.reindex(columns=need).notna().all(axis=1)]["tags.bench.analysis_of"]) if len(lik) else set()
for _, r in runs[kind.isna()].sort_values("tags.mlflow.runName").iterrows():
    if r["status"] != "FINISHED" or r["params.variant"] not in variants or r["params.latent"] not in latents:
        continue
    bdmc = r["params.seed"] in bdmc_seeds and r.isna().get("metrics.bdmc_gap", True)
    if r.isna().get("metrics.test_nll_ais", True) or r["run_id"] not in done or bdmc:
        print(r["run_id"], "bdmc" if bdmc else "-")
EOF
  )
  echo "== 3/4 likelihoods of ${#todo[@]} runs ($AIS_VARIANTS at latents $IWAE_LATENTS): AIS from the $AIS_START," \
       "T = $AIS_STEPS, C = $AIS_CHAINS on the first $AIS_IMAGES test images, gaps ($GAP_STEPS Adam steps), NLL" \
       "ladder, BDMC (M = $BDMC_IMAGES) on seeds ${BDMC_SEEDS:-none}"
  if (( ${#todo[@]} )); then
    # xargs appends each line's two words (run id, bdmc or -) after the fixed arguments: $8 and $9
    printf '%s\n' "${todo[@]}" | xargs -P "$WORKERS" -L 1 sh -c 'b=""; [ "$9" = bdmc ] && b="--bdmc $7"
      python -m bench.evaluate --run-id "$8" --tracking-uri "$1" --nll-samples 0 --ais --ais-steps "$2" \
        --ais-chains "$3" --ais-start "$4" --ais-images "$5" --gaps --gap-steps "$6" --nll-ladder $b --no-progress \
        | grep -E "^(test NLL by AIS|BDMC gap|gaps:|NLL ladder K=1000)" | sed "s/^/   $8: /"' _ \
        "$URI" "$AIS_STEPS" "$AIS_CHAINS" "$AIS_START" "$AIS_IMAGES" "$GAP_STEPS" "$BDMC_IMAGES"
  fi
  echo "   likelihoods took $((SECONDS - t0)) s; checking every run with test_nll_ais (scripts/check_likelihoods.py)"
  # into the store's folder: bench.report replaces the tables of an earlier report; copied beside them below
  rm -f "$STORE/likelihood_checks.csv"
  python scripts/check_likelihoods.py "$URI" --sweep "$SWEEP" --csv "$STORE/likelihood_checks.csv" || checked=$?
  if (( checked )); then
    echo "   the likelihood check failed (status $checked): the report is still written; this script exits $checked"
  fi
else
  echo "== 3/4 likelihoods: skipped (AIS_VARIANTS empty)"
fi

echo "== 4/4 report into $OUT"
compare=(); for c in $COMPARE; do compare+=(--compare "$c"); done
python -m bench.report --tracking-uri "$URI" --sweep "$SWEEP" --out "$OUT" ${DATE:+--date "$DATE"} "${compare[@]}"
if [[ -n "$AIS_VARIANTS" && -f "$STORE/likelihood_checks.csv" ]]; then
  cp "$STORE/likelihood_checks.csv" "$OUT/tables/likelihood_checks.csv"
  echo "   the likelihood check's table: $OUT/tables/likelihood_checks.csv"
fi
exit "$checked"
