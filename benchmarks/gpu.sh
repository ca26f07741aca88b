#!/usr/bin/env bash
# One prepared GPU run (the device machine has torch and timm but no registry): install the
# wheels carried in .gpu-wheels/ (made here by `bash benchmarks/gpu.sh --fetch`), install medfm
# with --no-deps, then print
#   1-2. ViT-B/16 MAE bf16 images/s + MFU at 224 px, a 3D ViT-B MAE on 96^3 (gpu_bench.py);
#   3.   the data-wait fraction of ct_3d with 8 DataLoader workers (loader_speed.py);
#   4.   a 1-process NCCL torchrun SimCLR run to completion.
# Tracking is off throughout. Sized to a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--fetch" ]]; then  # on a machine with the package index
    python3 -m pip download --no-deps -d .gpu-wheels monai omegaconf antlr4-python3-runtime \
        pydicom nibabel tqdm safetensors
    exit 0
fi
python3 -m pip install -q --no-index --no-deps .gpu-wheels/*.whl .gpu-wheels/*.tar.gz 2>/dev/null \
    || python3 -m pip install -q --no-index --no-deps .gpu-wheels/*.whl
python3 -m pip install -q --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 benchmarks/gpu_bench.py --steps 10
python3 benchmarks/loader_speed.py --volumes 32 --tiles 8 --steps 30 --workers 8 || \
    echo "loader benchmark failed (it needs the wheels above)"
out=$(mktemp -d)
python3 -m medfm synthetic --out "$out/data"
python3 -m medfm ingest "$out/data/raw" --labels "$out/data/labels.csv" --out "$out/ingest" \
    --no-progress --salt gpu
torchrun --standalone --nproc_per_node=1 -m medfm pretrain \
    --config configs/pretrain/simclr_vit_tiny_2d.yaml data.manifest="$out/ingest/manifest.csv" \
    out_dir="$out/simclr" train.max_steps=100 tracking.enabled=false train.progress=false
