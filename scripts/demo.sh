#!/usr/bin/env bash
# `make demo`: build the real CV model (EfficientNet-Lite0 + Fashion-MNIST head), compile it, then
# replay its evaluation stream on Apparate and on the unsplit model (vanilla) at the same Poisson
# arrivals, and print both side by side. Ends with the time it took.
set -euo pipefail
PY=${PY:-python3}
DATA=${DATA:-data}
OUT=${OUT:-out}
start=$(date +%s)
step() { echo "[demo $(( $(date +%s) - start ))s] $*"; }

step "building the CV model and its data into $DATA/cv"
$PY scripts/build_real_models.py --out "$DATA" --only cv
step "compiling $DATA/cv/model.onnx into $OUT/cv"
apparate-compile "$DATA/cv/model.onnx" --data "$DATA/cv/bootstrap.npz" --out "$OUT/cv" --force
step "replaying $DATA/cv/eval.npz at poisson:100 on Apparate, then on vanilla"
apparate-run --engine-dir "$OUT/cv" --data "$DATA/cv/eval.npz" --arrivals poisson:100 --compare-vanilla \
  --report "$OUT/cv_report.json"
elapsed=$(( $(date +%s) - start ))
echo "demo: done in $(( elapsed / 60 )) min $(( elapsed % 60 )) s; the report is $OUT/cv_report.json"
