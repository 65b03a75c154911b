#!/usr/bin/env bash
# `make demo`: the pipeline on the tiny preset with synthetic data (grows with each stage).
set -euo pipefail
cd "$(dirname "$0")/.."
export T2V_HOME="${T2V_HOME:-$PWD/.t2v/demo}"
.venv/bin/t2v data synth --out "$T2V_HOME/artifacts/synth" --num 24 --seed 0
