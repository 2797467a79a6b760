#!/usr/bin/env bash
# The longer CPU recipe (about 55 minutes on 2 cores): the default dVAE, 24 000 encoded
# images, 5 500 transformer steps, then the prompt-fidelity benchmark on fresh prompts.
#   bash benchmarks/long_recipe.sh [RUN_DIR]
set -euo pipefail
RUN=${1:-runs/long}
DALLE=${DALLE:-dalle}
PYTHON=${PYTHON:-python}
mkdir -p "$RUN"
start=$(date +%s)
$DALLE train-vae --data shapes --preset shapes --out "$RUN/vae" --force
$DALLE encode --vae "$RUN/vae" --data shapes --num 24000 --out "$RUN/tokens.safetensors" --force
$DALLE train --vae "$RUN/vae" --tokens "$RUN/tokens.safetensors" --out "$RUN/dalle" \
    --steps 5500 --save-every 1000 --force
end=$(date +%s)
echo "training wall time: $((end - start)) s" | tee "$RUN/wall.txt"
$PYTHON benchmarks/dalle_fidelity.py --model "$RUN/dalle/model" --temperature 0.5 \
    --cond-scale 2 --out "$RUN/bench" --json benchmarks/results/dalle_fidelity_long.json
