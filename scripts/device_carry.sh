#!/usr/bin/env bash
# Fill .devcarry/ (git-ignored, ~8 MB) with what the GPU signal benchmark needs on a machine that has no copy of
# the repository's environment: SmolLM2-135M's config and tokenizer (no weights: the benchmark then initialises
# the same architecture at random, which costs the same work) and the real Games fixture. Then, with the device
# tool, carry [".devcarry"] and run (one call; a few minutes on an H100, an estimate):
#   export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1; python3 scripts/bench_signals.py --device cuda \
#     --model-dir .devcarry/smollm2 --shared-dir .devcarry/shared --data games --n 256 --repeat 3 --n-embed 0 \
#     --md $OUT/bench_signals_gpu.md --plot $OUT/bench_signals_gpu.png
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
model=$("$py" -c "from goracs.models import smollm2_path; print(smollm2_path())")
shared=${SHARED_DATA:-../shared/data}
[ -d "$shared/amazon-games-2018" ] || { echo "no $shared/amazon-games-2018: the real Games fixture is needed" >&2; exit 1; }
rm -rf .devcarry
mkdir -p .devcarry/smollm2 .devcarry/shared
for f in config.json generation_config.json tokenizer.json tokenizer_config.json special_tokens_map.json chat_template.jinja; do
  [ -f "$model/$f" ] && cp "$model/$f" .devcarry/smollm2/
done
cp -r "$shared/amazon-games-2018" .devcarry/shared/
du -sh .devcarry
