#!/usr/bin/env bash
# The GPU checks in one run, for a machine with a CUDA GPU (README, "On a GPU"): the CUDA tests,
# `coherence analyze --device cuda` twice (the second from the cache), then the GPU benchmarks
# (estimator cost, paper-scale units, float32 precision, training throughput, reference
# columns for the fidelity measure). Each step has
# its own time limit, so one slow step cannot take the others' figures with it. Results land
# in bench/results/*cuda*.json and gpu_precision.json, copied with the logs to $OUT.
#
# Run from the repository root with the image's python3 (torch with CUDA); missing pure-Python
# packages can be given as wheels in .whl/ (installed to /tmp/site, nothing else touched).
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT/logs"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="$PWD:/tmp/site"
fi

STEPS=${STEPS:-all}  # or a list, e.g. STEPS="tests paper_vit"
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/logs/NAME.log
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    [[ $STEPS == all || " $STEPS " == *" $name "* ]] || return 0
    timeout "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
    local rc=$?
    printf '== %-12s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - start))"
    tail -n 4 "$OUT/logs/$name.log" | cut -c1-400
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)"

cli=(python3 -c "from coherence.cli import app; app()" analyze --workspace workspace
    --checkpoint workspace/checkpoints/unet_demo_s10 --data workspace/datasets/ce_demo
    --classes CE-RP,CE-CRP,CE-RPUI --window 0:16 --trajectories 0,1 --response smse
    --response mass --response energy --device cuda --out workspace/gpu_result.npz --yes)

step tests 100 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    tests/simulation/test_euler.py tests/simulation/test_navier_stokes.py -k "cuda or device"
step analyze 45 "${cli[@]}"
step analyze_cached 20 "${cli[@]}"
step cost 70 python3 -m bench.bench_fidelity --part cost --device cuda
step paper_unet 100 python3 -m bench.bench_paper_unit --arch unet --device cuda \
    --responses smse,mass,energy
step precision 120 python3 -m bench.bench_gpu_precision
step paper_vit 75 python3 -m bench.bench_paper_unit --arch vit --device cuda \
    --responses smse,mass,energy
step training 45 python3 -m bench.bench_training --cuda
step paper_unet_tf32 100 python3 -m bench.bench_paper_unit --arch unet --device cuda \
    --responses smse,mass,energy --tf32

# last, with what time is left: reference columns for the fidelity measure at demo
# scale (each finished chunk of 3 columns is kept, so a stop at the limit loses one chunk);
# rtol and caps as on the CPU runs, whose stores they extend (a system's key names them)
step rows_unet 70 python3 -m bench.bench_fidelity --part rows --arch unet --rtol 1e-3 \
    --cap 2000 --device cuda
step rows_vit 50 python3 -m bench.bench_fidelity --part rows --arch vit --rtol 1e-3 \
    --cap 3000 --device cuda

tar -czf "$OUT/results.tar.gz" bench/results/*cuda*.json bench/results/gpu_precision.json \
    bench/results/reference_columns_*.json bench/results/fidelity_rows_*.json \
    -C "$OUT" logs 2>/dev/null
ls -la "$OUT"
