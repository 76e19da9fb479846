#!/usr/bin/env bash
# Generate reports/example/ from a real sweep: the core variants (and the IWAE family, where registered) x latent
# sizes 2, 10, 20 x seeds 1-5, trained on all 60,000 images into a store of its own, evaluated (test NLL on every
# run, gradient variance on every seed), then reported with seed-paired intervals.
#
#   scripts/make_example_report.sh                      # the committed example: 60 core runs (+45 IWAE) of 10 epochs
#   QUICK=1 scripts/make_example_report.sh              # a rehearsal in a few minutes: 1 epoch on 300 images, /tmp
#
# Settings (environment variables, defaults in brackets):
#   STORE          folder of the MLflow store [/tmp/vae-bench-example]; reusing it resumes the sweep
#   OUT            report folder [reports/example]
#   VARIANTS       [sgvb_a,sgvb_b,sgvb_b_l5,sgvb_b_gauss]   LATENTS [2,10,20]   SEEDS [1,2,3,4,5]
#   IWAE_VARIANTS  added to VARIANTS when `bench.run --list` has them [iwae_k5,iwae_dreg_k5,iwae_stl_k5]
#   EPOCHS         [10]            LIMIT_TRAIN  training images [unset: all 60,000]
#   NLL_SAMPLES    importance samples K for test_nll, on every run [1000: the IWAE comparison's K]
#   GRADVAR_SEEDS  runs of these seeds get bench.evaluate --gradient-variance [every seed]; empty to skip
#   GRADVAR_VARIANTS  ... and of these variants [every variant] (QUICK: sgvb_b, about 30 s per evaluation here)
#   REPEATS        noise draws per estimator for the gradient variance [100]
#   COMPARE        extra pairs for bench.report --compare, space separated [sgvb_b_l5:iwae_k5, if both are run]
#   SWEEP          the sweep id (tag bench.sweep) [example]
#   DATE           report date, YYYY-MM-DD [today]
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${QUICK:-}" ]]; then
  : "${STORE:=/tmp/vae-bench-example-quick}" "${OUT:=/tmp/vae-bench-example-quick/report}"
  : "${EPOCHS:=1}" "${LIMIT_TRAIN:=300}" "${NLL_SAMPLES:=5}" "${REPEATS:=2}" "${LATENTS:=2,10}" "${SEEDS:=1,2}"
  : "${GRADVAR_VARIANTS:=sgvb_b}"
fi
STORE=${STORE:-/tmp/vae-bench-example}
OUT=${OUT:-reports/example}
VARIANTS=${VARIANTS:-sgvb_a,sgvb_b,sgvb_b_l5,sgvb_b_gauss}
IWAE_VARIANTS=${IWAE_VARIANTS-iwae_k5,iwae_dreg_k5,iwae_stl_k5}
LATENTS=${LATENTS:-2,10,20}
SEEDS=${SEEDS:-1,2,3,4,5}
EPOCHS=${EPOCHS:-10}
LIMIT_TRAIN=${LIMIT_TRAIN:-}
NLL_SAMPLES=${NLL_SAMPLES:-1000}
GRADVAR_SEEDS=${GRADVAR_SEEDS-$SEEDS}
GRADVAR_VARIANTS=${GRADVAR_VARIANTS:-}
REPEATS=${REPEATS:-100}

# The IWAE family joins when this checkout registers it (another branch adds IWAE-DReG and IWAE-STL).
registered=$(python -m bench.run --list | awk '{print $1}')
for v in ${IWAE_VARIANTS//,/ }; do
  if grep -qx "$v" <<<"$registered"; then VARIANTS="$VARIANTS,$v"; else echo "   (variant $v not registered: left out)"; fi
done
if [[ -z "${COMPARE+x}" ]]; then  # L = 5 beside IWAE k = 5: the same number of samples
  COMPARE=""; [[ ",$VARIANTS," == *,sgvb_b_l5,* && ",$VARIANTS," == *,iwae_k5,* ]] && COMPARE="sgvb_b_l5:iwae_k5"
fi
SWEEP=${SWEEP:-example}
EXPERIMENT=vae-bench
mkdir -p "$STORE"
URI="sqlite:///$(cd "$STORE" && pwd)/mlflow.db"
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
limit=(); [[ -n "$LIMIT_TRAIN" ]] && limit=(--limit-train "$LIMIT_TRAIN")

echo "== 1/3 training: $VARIANTS x latents $LATENTS x seeds $SEEDS, $EPOCHS epochs, into $URI"
t0=$SECONDS
if [[ -f bench/grid.py ]]; then  # resumable: combinations already FINISHED in the store are skipped
  python -m bench.grid --variants "$VARIANTS" --latents "$LATENTS" --seeds "$SEEDS" --epochs "$EPOCHS" \
    "${limit[@]}" --nll-samples "$NLL_SAMPLES" --sweep "$SWEEP" --experiment "$EXPERIMENT" \
    --tracking-uri "$URI" --no-progress
else
  for v in ${VARIANTS//,/ }; do for z in ${LATENTS//,/ }; do for s in ${SEEDS//,/ }; do
    python -m bench.run --variant "$v" --latent "$z" --seed "$s" --epochs "$EPOCHS" "${limit[@]}" \
      --nll-samples "$NLL_SAMPLES" --sweep "$SWEEP" --experiment "$EXPERIMENT" --tracking-uri "$URI" \
      --no-progress || echo "run $v z=$z seed=$s did not finish (it is listed in the report)"
  done; done; done
fi
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
for _, r in runs.sort_values("tags.mlflow.runName").iterrows():
    if (r["status"] == "FINISHED" and r["params.seed"] in seeds
            and (not variants or r["params.variant"] in variants)
            and r.isna().get("metrics.gradvar/encoder/sgvb_b", True)
            and r.isna().get("metrics.gradvar_encoder_sgvb_b", True)):  # the names before the GRADVAR contract
        print(r["run_id"])
EOF
  )
  echo "== 2/3 gradient variance of ${#ids[@]} runs (seeds $GRADVAR_SEEDS, $REPEATS repeats)"
  for id in "${ids[@]}"; do
    python -m bench.evaluate --run-id "$id" --tracking-uri "$URI" --nll-samples 0 --gradient-variance \
      --repeats "$REPEATS" --no-progress | tail -n 1
  done
else
  echo "== 2/3 gradient variance: skipped"
fi
echo "   evaluation took $((SECONDS - t0)) s"

echo "== 3/3 report into $OUT"
compare=(); for c in $COMPARE; do compare+=(--compare "$c"); done
python -m bench.report --tracking-uri "$URI" --sweep "$SWEEP" --out "$OUT" ${DATE:+--date "$DATE"} "${compare[@]}"
