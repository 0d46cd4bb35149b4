#!/usr/bin/env bash
# medbench's GPU checks as one prepared pass, for a machine with one CUDA GPU.
#
# Usage: [OUT=DIR] [QUICK=1] [SKIP="N ..."] [PYTHON=python3] bash benchmarks/gpu_check.sh [--help]
#
#   OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh          # on the GPU machine
#   QUICK=1 OUT=/tmp/gpu-dry bash benchmarks/gpu_check.sh    # dry run of the plumbing on a CPU
#   SKIP="2 7" OUT=... bash benchmarks/gpu_check.sh          # leave out steps already measured
#   bash benchmarks/gpu_check.sh --help                      # this text
#
# Run from the repository root. Each step has its own time limit, so a slow step cannot
# take the later ones with it; everything is logged to $OUT/gpu_check.log. If a folder .whl
# of wheels is there (packages the machine lacks: medmnist, optuna, ...), they are installed
# into /tmp/site first. The datasets are full-size synthetic stand-ins of DermaMNIST and
# OCTMNIST at 28 px (the default grid), written on the machine.
#
# Steps, most important first (the first run, on an H100, took 570 s and ran out of time in
# step 4 with 40-epoch runs; the grid runs are now 1-2 epochs, projected to 40 by
# benchmarks/grid_timing.py):
#  1. environment and imports (stops here if medbench cannot be imported);
#  2. training images/s of advanced_cnn, efficientnet and resnet18 at 28 and 224 px,
#     fp32 / bf16 autocast, with and without channels-last (benchmarks/model_speed.py train);
#  3. `medbench train` under torchrun on the GPU (NCCL process group) with one process,
#     and with more processes than GPUs (must stop with a one-line error);
#  4. the engine's training images/s at 28 px, fp32 against bf16 (both channels-last), for
#     the three models, 3 epochs each, in one process;
#  5. the default benchmark's cells, 1 seed: OCTMNIST for 1 epoch and DermaMNIST for 2,
#     with a projection to the default 40 epochs x 3 seeds;
#  6. the same seed trained twice on the GPU, to see what CUDA leaves non-deterministic;
#  7. the 224-px speeds again with cudnn.benchmark on;
#  8. fp16 with the loss scaler against fp16 without it, bf16 and fp32 (fused AdamW).
set -u
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then  # the comment above, unmarked
    sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
T0=$(date +%s)
step() { echo; echo "=== [$(($(date +%s) - T0)) s] $*"; }
want() { [[ " ${SKIP:-} " != *" $1 "* ]]; }  # SKIP="2 7" leaves steps 2 and 7 out

if [ "${QUICK:-0}" = 1 ]; then
    DEVICE=cpu; DERMA="n_train=256, n_val=64, n_test=64"; OCT="n_train=512, n_val=128, n_test=64"
    SPEED28="--steps 1 --repeats 1 --batch 8"; SPEED224="--steps 1 --repeats 1 --batch 2"
    SPEED_DEVICE=cpu
else
    DEVICE=cuda; DERMA="n_train=7007, n_val=1003, n_test=2005"
    OCT="n_train=97477, n_val=10832, n_test=1000"
    SPEED28="--steps 50 --repeats 3"; SPEED224="--steps 10 --repeats 3"
    SPEED_DEVICE=cuda
fi
DATA=/tmp/medbench-gpu-data

step "1. environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
if [ -d .whl ] && [ "${QUICK:-0}" != 1 ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
$PY - <<PYEOF || exit 1
import torch, torchvision, timm, medmnist, optuna, medbench, medbench.cli
print("torch", torch.__version__, "torchvision", torchvision.__version__, "timm", timm.__version__,
      "medmnist", medmnist.__version__, "optuna", optuna.__version__, "medbench", medbench.__file__)
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
from medbench.data.synthetic import write_synthetic_like
write_synthetic_like("$DATA", "dermamnist", 28, $DERMA)
write_synthetic_like("$DATA", "octmnist", 28, $OCT)
print("stand-ins written")
PYEOF

if want 2; then
step "2. training images/s, 28 px"
timeout 100 $PY benchmarks/model_speed.py train --device $SPEED_DEVICE --models advanced_cnn efficientnet \
    --modes fp32 fp32+CL bf16 bf16+CL --size 28 $SPEED28 | tee "$OUT/speed28.txt"
step "2. training images/s, 224 px"
timeout 100 $PY benchmarks/model_speed.py train --device $SPEED_DEVICE --models advanced_cnn efficientnet \
    --modes fp32 fp32+CL bf16 bf16+CL --size 224 $SPEED224 | tee "$OUT/speed224.txt"
fi
if want 3; then
TRAIN="-m medbench train --dataset dermamnist --data-dir $DATA --model resnet18 --device $DEVICE --quiet"
step "3. torchrun, 1 process"
timeout 120 $PY -m torch.distributed.run --standalone --nproc_per_node 1 $TRAIN --epochs 1 \
    --run-dir /tmp/ddp1
echo "rc=$?"
$PY -c "import json; r=json.load(open('/tmp/ddp1/results.json')); print('results:', r['status'], r['environment'].get('gpu'), r['metrics']['test']['acc'], r.get('distributed'))"
step "3. torchrun, 2 processes on a machine with 1 GPU (must be a one-line error)"
timeout 60 $PY -m torch.distributed.run --standalone --nproc_per_node 2 $TRAIN --epochs 1 \
    --run-dir /tmp/ddp2 > /tmp/ddp2.log 2>&1
echo "rc=$?"
grep -E "^medbench: error|exitcode|rank  " /tmp/ddp2.log | head -12
fi
if want 4; then
step "4. engine training images/s at 28 px, fp32 against bf16"
timeout 150 $PY - <<PYEOF
import statistics
from medbench.training.config import TrainConfig
from medbench.data import load_dataset
from medbench.training.engine import train
data = load_dataset("dermamnist", 28, "$DATA", progress=False)
for model in ("advanced_cnn", "efficientnet", "resnet18"):
    for precision in ("fp32", "bf16"):
        r = train(TrainConfig(dataset="dermamnist", model=model, epochs=3, device="$DEVICE",
                              precision=precision, data_dir="$DATA",
                              run_dir=f"/tmp/prec-{model}-{precision}"),
                  data=data, progress=False, measure=False)
        ips = statistics.median(h.train_images_per_second for h in r.history)
        print(f"engine {model:>13} {precision}: {ips:8.0f} img/s (median of 3 rounds)", flush=True)
PYEOF

fi
if want 5; then
# grid_cells NAME DATASET EPOCHS LIMIT: one seed of the default grid's DATASET cells, timed,
# summarised with a projection to 40 epochs x 3 seeds, and kept (without weights) in $OUT.
grid_cells() {
    step "5. default grid, $2 for $3 epoch(s), 1 seed"
    local t
    t=$(date +%s)
    timeout "$4" $PY -m medbench benchmark --data-dir $DATA --out "/tmp/grid-$1" --datasets "$2" \
        --seeds 1 --epochs "$3" --device $DEVICE --quiet
    echo "rc=$? wall=$(($(date +%s) - t)) s"
    $PY benchmarks/grid_timing.py "/tmp/grid-$1" --project-epochs 40 --seeds 3 --json "$OUT/grid_$1.json"
    tar czf "$OUT/grid-$1.tgz" -C /tmp --exclude="*.pt" --exclude="*.npz" "grid-$1"
}
grid_cells oct octmnist 1 180
grid_cells derma dermamnist 2 100

fi
if want 6; then
step "6. the same seed twice"
for i in 1 2; do
    timeout 90 $PY -m medbench train --dataset dermamnist --data-dir $DATA --model efficientnet \
        --device $DEVICE --epochs 2 --seed 0 --quiet --run-dir /tmp/det$i > /dev/null
done
$PY - <<PYEOF
import json, torch
a, b = (json.load(open(f"/tmp/det{i}/results.json")) for i in (1, 2))
for x, y in zip(a["history"], b["history"]):
    print("round", x["epoch"], "train loss", x["train_loss"], y["train_loss"], "val loss", x["val_loss"], y["val_loss"])
wa = torch.load("/tmp/det1/model.pt", weights_only=True)
wb = torch.load("/tmp/det2/model.pt", weights_only=True)
sa, sb = wa["state_dict"], wb["state_dict"]
diff = max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa if torch.is_tensor(sa[k]) and sa[k].is_floating_point())
print("largest weight difference after 2 epochs:", diff)
PYEOF

fi
if want 7; then
step "7. 224 px with cudnn.benchmark"
timeout 120 $PY benchmarks/model_speed.py train --device $SPEED_DEVICE --models advanced_cnn efficientnet \
    --modes bf16 bf16+CL --size 224 $SPEED224 $([ $SPEED_DEVICE = cuda ] && echo --cudnn-benchmark) | tee "$OUT/speed224_cudnn_benchmark.txt"
fi
if want 8; then
step "8. fp16 with loss scaling against fp16 without it, bf16 and fp32 (fused AdamW)"
timeout 150 $PY - <<PYEOF
import torch
from medbench.data import load_dataset
from medbench.training import checkpoint as ckpt
from medbench.training.config import TrainConfig
from medbench.training.engine import train
from medbench.utils.runtime import Runtime, resolve_runtime

class Unscaled(Runtime):
    """The runtime of fp16 training without the loss scaler."""
    def grad_scaler(self):
        return torch.amp.GradScaler(self.device.type, enabled=False)

data = load_dataset("dermamnist", 28, "$DATA", progress=False)
for name, precision in (("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"), ("fp16, no scaler", "fp16")):
    run_dir = f"/tmp/amp-{name.replace(' ', '').replace(',', '-')}"
    config = TrainConfig(dataset="dermamnist", model="advanced_cnn", epochs=3, device="$DEVICE",
                         precision=precision, data_dir="$DATA", run_dir=run_dir,
                         keep_checkpoint=True)
    runtime = resolve_runtime(config.device, config.precision, config.channels_last)
    if "no scaler" in name:
        runtime = Unscaled(runtime.device, runtime.precision, runtime.channels_last)
    r = train(config, data=data, progress=False, measure=False, runtime=runtime)
    state = ckpt.load(run_dir + "/checkpoint.pt")
    fused = [g.get("fused") for g in state["optimizer"]["param_groups"]]
    print(f"{name:>16}: train loss", [round(h.train_loss, 4) for h in r.history],
          "val AUC", round(r.history[-1].val_auc, 4), "scaler", state.get("grad_scaler"),
          "fused", fused[0], flush=True)
PYEOF
fi
step "done"
