#!/usr/bin/env bash
# Generate reports/example/ from a real sweep: the core variants x latent sizes 2, 10, 20 x seeds 1, 2, 3,
# trained on all 60,000 images into a store of its own, evaluated, then reported.
#
#   scripts/make_example_report.sh                      # the committed example: 36 runs of 10 epochs
#   QUICK=1 scripts/make_example_report.sh              # a rehearsal: 1 epoch on 300 images, into /tmp
#
# Settings (environment variables, defaults in brackets):
#   STORE          folder of the MLflow store [/tmp/vae-bench-example]; reusing it resumes the sweep
#   OUT            report folder [reports/example]
#   VARIANTS       [sgvb_a,sgvb_b,sgvb_b_l5,sgvb_b_gauss]   LATENTS [2,10,20]   SEEDS [1,2,3]
#   EPOCHS         [10]            LIMIT_TRAIN  training images [unset: all 60,000]
#   NLL_SAMPLES    importance samples for test_nll, on every run [100]
#   GRADVAR_SEEDS  runs of these seeds get bench.evaluate --gradient-variance [1]; empty to skip
#   REPEATS        noise draws per estimator for the gradient variance [100]
#   SWEEP          the sweep id (tag bench.sweep) [example]
#   DATE           report date, YYYY-MM-DD [today]
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${QUICK:-}" ]]; then
  : "${STORE:=/tmp/vae-bench-example-quick}" "${OUT:=/tmp/vae-bench-example-quick/report}"
  : "${EPOCHS:=1}" "${LIMIT_TRAIN:=300}" "${NLL_SAMPLES:=5}" "${REPEATS:=2}"
fi
STORE=${STORE:-/tmp/vae-bench-example}
OUT=${OUT:-reports/example}
VARIANTS=${VARIANTS:-sgvb_a,sgvb_b,sgvb_b_l5,sgvb_b_gauss}
LATENTS=${LATENTS:-2,10,20}
SEEDS=${SEEDS:-1,2,3}
EPOCHS=${EPOCHS:-10}
LIMIT_TRAIN=${LIMIT_TRAIN:-}
NLL_SAMPLES=${NLL_SAMPLES:-100}
GRADVAR_SEEDS=${GRADVAR_SEEDS-1}
REPEATS=${REPEATS:-100}
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
  mapfile -t ids < <(python - "$URI" "$SWEEP" "$GRADVAR_SEEDS" <<'EOF'
import sys

import mlflow

uri, sweep, seeds = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
mlflow.set_tracking_uri(uri)
runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`bench.sweep` = '{sweep}'")
for _, r in runs.sort_values("tags.mlflow.runName").iterrows():
    if (r["status"] == "FINISHED" and r["params.seed"] in seeds
            and r.isna().get("metrics.gradvar_encoder_sgvb_b", True)):
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
python -m bench.report --tracking-uri "$URI" --sweep "$SWEEP" --out "$OUT" ${DATE:+--date "$DATE"}
