#!/usr/bin/env bash
# Fill a carry folder (default .devcarry/, git-ignored, 40 MB) with what the GPU check (scripts/gpu_check.py) and
# the GPU signal benchmark need on the device machine, which has torch, transformers, peft and accelerate but no
# copy of this repository's environment and no network:
#   smollm2/  SmolLM2-135M's config and tokenizer, no weights (the scripts then initialise the same architecture at
#             random, seeded: the same work, and the 540 MB weights need not travel)
#   shared/   the real Games fixture (amazon-games-2018)
#   wheels/   what goracs imports that the device image lacks, at requirements.txt's versions, for its Python
#             (DEVICE_PYTHON, default 3.12): omegaconf and its antlr4 runtime, POT (32 MB of the 40).
#             WHEELS=0 leaves them out (tests: no network needed)
# Usage: bash scripts/device_carry.sh [DEST]
# Then, with the device tool, carry [".devcarry"] and run (one call, README.md "GPU check"):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devcarry/wheels/*.whl
#   && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --device cuda
#      --model-dir .devcarry/smollm2 --shared-dir .devcarry/shared --out $OUT
# The signal benchmark, after the same pip line (a few minutes on an H100, an estimate):
#   PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 scripts/bench_signals.py --device cuda \
#     --model-dir .devcarry/smollm2 --shared-dir .devcarry/shared --data games --n 256 --repeat 3 --n-embed 0 \
#     --md $OUT/bench_signals_gpu.md --plot $OUT/bench_signals_gpu.png
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
dest=${1:-.devcarry}
model=${MODEL_DIR:-$("$py" -c "from goracs.models import smollm2_path; print(smollm2_path())")}
shared=${SHARED_DATA:-../shared/data}
[ -d "$shared/amazon-games-2018" ] || { echo "no $shared/amazon-games-2018: the real Games fixture is needed" >&2; exit 1; }
[ -f "$model/config.json" ] || { echo "no $model/config.json: SmolLM2's config and tokenizer are needed" >&2; exit 1; }
# only what this script makes is removed (DEST may be any folder)
rm -rf "$dest/smollm2" "$dest/shared" "$dest/wheels"
mkdir -p "$dest/smollm2" "$dest/shared"
for f in config.json generation_config.json tokenizer.json tokenizer_config.json special_tokens_map.json chat_template.jinja; do
  if [ -f "$model/$f" ]; then cp "$model/$f" "$dest/smollm2/"; fi
done
cp -r "$shared/amazon-games-2018" "$dest/shared/"
if [ "${WHEELS:-1}" != 0 ]; then
  mkdir -p "$dest/wheels"
  ver() { sed -n "s/^$1==\([^ ]*\).*/\1/p" requirements.txt; }
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "${DEVICE_PYTHON:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dest/wheels" "pot==$(ver pot)" "omegaconf==$(ver omegaconf)"
  # omegaconf's parser runtime is published as a source archive only: its pure-Python wheel is built here
  antlr=$("$py" -c "import importlib.metadata as m; print(m.version('antlr4-python3-runtime'))")
  "$py" -m pip wheel -q --no-deps -w "$dest/wheels" "antlr4-python3-runtime==$antlr"
  ls "$dest/wheels"
fi
du -sh "$dest"
