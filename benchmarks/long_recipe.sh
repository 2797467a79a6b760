#!/usr/bin/env bash
# The long CPU recipe: the demo's recipe (`dalle demo`) with a 55-minute budget instead of 9 (a
# larger dVAE share up to its cap, 40 000 encoded scenes, the rest to the transformer, the
# demo's precision and compiled step), then the prompt-fidelity benchmark on fresh prompts
# with the model's own sampling defaults (no sampling flags).
#   bash benchmarks/long_recipe.sh [RUN_DIR]      (MINUTES=55 by default; JSON names the result)
set -euo pipefail
RUN=$(realpath -m "${1:-$(dirname "$0")/../runs/long}")
cd "$(dirname "$0")/.."  # the results path below is the repository's
MINUTES=${MINUTES:-55}
DALLE=${DALLE:-dalle}
PYTHON=${PYTHON:-python}
JSON=${JSON:-benchmarks/results/dalle_fidelity_long.json}
$DALLE demo --minutes "$MINUTES" --out "$RUN" --force
$PYTHON benchmarks/dalle_fidelity.py --model "$RUN/model" --out "$RUN/bench" \
    --json "$JSON"
