#!/usr/bin/env bash
# The GPU tests and benchmarks of issues 4 and 7, as one command for a lent GPU machine.
#
# Here, once:   python scripts/device_wheels.py          (the packages the machine lacks, into the ignored .whl/)
# There:        bash scripts/gpu_session.sh STAGE...      (the device tool's `run`, with carry [".whl"])
#
# Stages, in the order worth running them (each should fit one 10-minute call; the small ones can share one):
#   env       nvidia-smi, versions
#   tests     python -m pytest -m gpu tests/test_gpu.py
#   txt2img   benchmarks/txt2img.py --device cuda --write-docs     (ours vs vanilla diffusers, 512², b1 and b8)
#   gpu       benchmarks/gpu.py --write-docs                       (default / --opt-compile / vanilla, memory modes)
#   networks  benchmarks/networks.py --device cuda --write-docs    (LoRA switch, first load, per-step overhead)
#   hires     benchmarks/hires.py --device cuda --write-docs       (hires fix 512² → 1024² vs diffusers' chain)
#   img2img   benchmarks/img2img.py --device cuda --write-docs     (img2img 512² vs diffusers' img2img pipeline)
#   xyz       benchmarks/xyz.py --device cuda --write-docs         (X/Y/Z plot of LoRA weights vs diffusers adapters)
#
# Each stage's log goes to $OUT/<stage>.log and one line per stage to $OUT/summary.txt; at the end the (appended)
# docs/benchmarks.md is copied to $OUT, because only $OUT comes back from the machine: copy it over the local
# docs/benchmarks.md before the next call, so results accumulate.
#
# WHEELS names another wheel folder (default .whl; an empty one installs nothing). REHEARSAL=1 runs every stage on
# the CPU with the tiny model and small sizes (no --write-docs): a check, on any machine, that the carried wheels
# and the stages work, before device time is spent.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=${OUT:-/tmp/gpu-session}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

for name in "$@"; do
    case $name in
        env|tests|txt2img|gpu|networks|hires|img2img|xyz) ;;
        *) echo "unknown stage: $name (env, tests, txt2img, gpu, networks, hires, img2img, xyz)" >&2; exit 2 ;;
    esac
done

WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    SITE=${SITE:-/tmp/site}
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
        || { echo "installing the carried wheels failed" >&2; exit 1; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ "${REHEARSAL:-0}" = 1 ]; then
    TXT2IMG=(benchmarks/txt2img.py --device cpu --quick)
    GPU=(benchmarks/gpu.py --device cpu --model tiny --size 64 --steps 2 --batches 1 --repeats 1 --no-compile)
    NETWORKS=(benchmarks/networks.py --quick)
    HIRES=(benchmarks/hires.py --quick)
    IMG2IMG=(benchmarks/img2img.py --quick)
    XYZ=(benchmarks/xyz.py --quick)
else
    TXT2IMG=(benchmarks/txt2img.py --device cuda --write-docs)
    GPU=(benchmarks/gpu.py --write-docs)
    NETWORKS=(benchmarks/networks.py --device cuda --write-docs)
    HIRES=(benchmarks/hires.py --device cuda --write-docs)
    IMG2IMG=(benchmarks/img2img.py --device cuda --write-docs)
    XYZ=(benchmarks/xyz.py --device cuda --write-docs)
fi

status=0
stage() {  # stage NAME COMMAND...: run it, keep its log, note its exit status and time
    local name=$1 start rc
    shift
    start=$(date +%s)
    echo "== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    echo "$name: exit $rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
    [ "$rc" = 0 ] || status=1
}

for name in "$@"; do
    case $name in
        env) stage env bash -c "nvidia-smi || true; $PYTHON -c 'import torch, diffusers, transformers;
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available());
print(\"diffusers\", diffusers.__version__, \"transformers\", transformers.__version__)'" ;;
        tests) stage tests "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py ;;
        txt2img) stage txt2img "$PYTHON" "${TXT2IMG[@]}" ;;
        gpu) stage gpu "$PYTHON" "${GPU[@]}" ;;
        networks) stage networks "$PYTHON" "${NETWORKS[@]}" ;;
        hires) stage hires "$PYTHON" "${HIRES[@]}" ;;
        img2img) stage img2img "$PYTHON" "${IMG2IMG[@]}" ;;
        xyz) stage xyz "$PYTHON" "${XYZ[@]}" ;;
    esac
done
cp docs/benchmarks.md "$OUT/benchmarks.md"
exit $status
