#!/usr/bin/env bash
# Regenerate constraints.txt: the exact versions a fresh install of vae-bench[dev] resolves to today, from a new
# virtual environment (nothing of this one leaks in). Run it, run the suite (.ci/run), and commit both together.
# pyproject.toml keeps open ranges; constraints.txt is what was tested (README, "Tested installs").
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q -e ".[dev]"
{
  echo "# The versions CI ran (scripts/refresh_constraints.sh, $(date -u +%Y-%m-%d), Python $("$tmp/venv/bin/python" -c 'import platform; print(platform.python_version())'))."
  echo "# Install through it: pip install -c constraints.txt -e \".[dev]\""
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins"
