#!/usr/bin/env bash
# The container scripts on a CUDA GPU: what CI (CPU only) cannot check.
#
# Runs, on the machine's own python3 with torch/torchvision (no venv, no SageMaker SDK):
#   1. Fashion-MNIST (the default data, 1,200 per class) rendered and split by steps/preprocess.py;
#   2. training/train.py as the pipeline's final training job runs it (bfloat16 autocast, flips
#      and shifts on the GPU), then steps/evaluate.py on the test split; then float16 with
#      gradient scaling, twice (the second run resumes from the first one's checkpoint);
#   3. tests/test_train.py on the GPU (artifact, evaluation, inference.py serving, resume after
#      SIGKILL) -- all but the Debugger hook tests (smdebug needs numpy<2); TESTS=EXPR picks
#      others (pytest -k);
#   4. bench/train_throughput.py: imgpipe's GPU path against a bare DataLoader loop.
#
# Needs, under $CARRY (default .devcarry): fashion-mnist/*.gz (Debian's dataset-fashion-mnist
# files) and torch/hub/checkpoints/mobilenet_v2-b0353104.pth. Logs and evaluation.json go to
# $OUT (default: a new temporary directory, printed at the end).
#
#   mkdir -p .devcarry/torch/hub/checkpoints && cp /usr/share/datasets/fashion-mnist -r .devcarry/ \
#     && cp ~/.cache/torch/hub/checkpoints/mobilenet_v2-b0353104.pth .devcarry/torch/hub/checkpoints/
#   bash bench/gpu_check.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CARRY=${CARRY:-$ROOT/.devcarry}
OUT=${OUT:-$(mktemp -d)}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export TORCH_HOME=$CARRY/torch IMGPIPE_FASHION_MNIST_DIR=$CARRY/fashion-mnist PYTHONUNBUFFERED=1
export PYTHONPATH=$ROOT/training:$ROOT
cd "$ROOT"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import sys, torch, torchvision, numpy; print("python", sys.version.split()[0], "torch", torch.__version__, "torchvision", torchvision.__version__, "numpy", numpy.__version__, "cuda", torch.cuda.is_available())'

echo "== 1. data"
python3 -c "from pipelines.datasets import sample_dataset; print(sample_dataset('fashion-mnist', '$WORK/raw', per_class=1200))"
python3 steps/preprocess.py --input-dir "$WORK/raw" --output-dir "$WORK/splits" 2>&1 | tail -3

echo "== 2. train + evaluate (the final training job's hyperparameters from the CPU run)"
start=$(date +%s.%N)
SM_MODEL_DIR=$WORK/model SM_OUTPUT_DATA_DIR=$WORK/output SM_CHECKPOINT_DIR=$WORK/ckpt \
  python3 training/train.py --train-dir "$WORK/splits/train" --valid-dir "$WORK/splits/valid" \
  --optimizer adamw --learning-rate 0.00175 --batch-size 118 --epochs 5 2>&1 | tee "$OUT/train.log"
echo "train.py wall: $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s"
python3 steps/evaluate.py --model-dir "$WORK/model" --test-dir "$WORK/splits/test" --output-dir "$WORK/eval" 2>&1 | tail -3
cp "$WORK/eval/evaluation.json" "$OUT/"
python3 -c "import json; m = json.load(open('$OUT/evaluation.json'))['multiclass_classification_metrics']; print('test accuracy', m['accuracy']['value'])"

echo "== 2b. float16 with gradient scaling (GPUs without bfloat16), run twice: the second resumes"
for attempt in 1 2; do
  SM_MODEL_DIR=$WORK/model16 SM_OUTPUT_DATA_DIR=$WORK/output16 SM_CHECKPOINT_DIR=$WORK/ckpt16 \
    python3 training/train.py --train-dir "$WORK/splits/train" --valid-dir "$WORK/splits/valid" \
    --mixed-precision fp16 --max-train-images 2000 --epochs 2 2>&1 | grep -E "mixed|resumed|^epoch=|final"
done

echo "== 3. tests/test_train.py on the GPU"
python3 -m pytest -q -p no:cacheprovider tests/test_train.py -k "${TESTS:-not debugger_hook}" 2>&1 | tail -5

echo "== 4. throughput: imgpipe vs bare DataLoader loop"
python3 bench/train_throughput.py --data "$WORK/splits/train" --epochs 3 --batch-size 128 --device cuda 2>&1 | tee "$OUT/throughput.log"
echo "logs and evaluation.json in $OUT"
