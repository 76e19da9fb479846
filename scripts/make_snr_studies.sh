#!/usr/bin/env bash
# The SNR studies behind reports/snr/: sgvb_b models of latent 2 and 20, on grey levels and on binarised MNIST
# (--binarize dynamic), each trained EPOCHS epochs (seed 1), then `python -m bench.snr` at their parameters.
# Each study writes reports/snr/<study>/ (snr.md, snr.csv, slopes.csv, snr_vs_k.png) and logs into its run;
# reports/snr/report.md is the overview written from those files.
#
#   scripts/make_snr_studies.sh                     # every study: bin2 grey2 bin20 grey20
#   STUDIES="grey2 bin20" scripts/make_snr_studies.sh
#
# Settings (environment variables, defaults in brackets): STORE [/tmp/vae-bench-snr], OUT [reports/snr],
# EPOCHS [5], IMAGES (M) [8], REPEATS (R) [100], K_GRID [1,3,10,30,100,300,1000], STUDIES [bin2 grey2 bin20 grey20].
# A model already FINISHED in STORE with the same settings is reused, so a second call only runs the studies.
set -euo pipefail
cd "$(dirname "$0")/.."

STORE=${STORE:-/tmp/vae-bench-snr}
OUT=${OUT:-reports/snr}
EPOCHS=${EPOCHS:-5}
IMAGES=${IMAGES:-8}
REPEATS=${REPEATS:-100}
K_GRID=${K_GRID:-1,3,10,30,100,300,1000}
STUDIES=${STUDIES:-bin2 grey2 bin20 grey20}
mkdir -p "$STORE"
URI="sqlite:///$(cd "$STORE" && pwd)/mlflow.db"
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

finished_run() {  # finished_run LATENT BINARIZE: the id of a FINISHED sgvb_b run with these settings, or nothing
  python - "$URI" "$1" "$2" "$EPOCHS" <<'EOF'
import sys

import mlflow

uri, latent, binarize, epochs = sys.argv[1:]
mlflow.set_tracking_uri(uri)
runs = mlflow.search_runs(search_all_experiments=True, filter_string=(
    f"params.variant = 'sgvb_b' AND params.latent = '{latent}' AND params.binarize = '{binarize}' "
    f"AND params.seed = '1' AND params.epochs = '{epochs}' AND attributes.status = 'FINISHED'"))
if "tags.bench.analysis" in runs:  # analysis runs carry their training run's params but have no model
    runs = runs[runs["tags.bench.analysis"].isna()]
print(runs["run_id"].iloc[0] if len(runs) else "")
EOF
}

for study in $STUDIES; do
  case $study in
    bin*) binarize=dynamic ;;
    grey*) binarize=none ;;
    *) echo "unknown study $study (bin2, grey2, bin20, grey20)" >&2; exit 2 ;;
  esac
  latent=${study#bin}; latent=${latent#grey}
  id=$(finished_run "$latent" "$binarize")
  if [[ -z "$id" ]]; then
    echo "== $study: training sgvb_b, latent $latent, binarize $binarize, $EPOCHS epochs"
    python -m bench.run --variant sgvb_b --latent "$latent" --epochs "$EPOCHS" --binarize "$binarize" --seed 1 \
      --tracking-uri "$URI" --no-progress | tail -n 2
    id=$(finished_run "$latent" "$binarize")
  fi
  echo "== $study: bench.snr on run $id (M = $IMAGES, R = $REPEATS, K in $K_GRID)"
  t0=$SECONDS
  python -m bench.snr --run-id "$id" --images "$IMAGES" --repeats "$REPEATS" --k-grid "$K_GRID" \
    --tracking-uri "$URI" --out "$OUT/$study"
  echo "   $study took $((SECONDS - t0)) s"
done
