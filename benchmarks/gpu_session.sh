#!/usr/bin/env bash
# The prepared GPU runs (issues 17, 14 and 15): device calls back to back on one warm machine.
#
# Here, once per session (~3 minutes on 2 cores): the packages the device machine lacks, unpacked and
# xz-compressed into .whl/a and .whl/b (ignored by git), each under the 64 MiB a call carries:
#     bash benchmarks/gpu_session.sh prepare
# Then two `run`s of the device tool, the second within the machine's warm time after the first:
#     bash benchmarks/gpu_session.sh run a     carry [".whl/a"], timeout_s 600: PyAV, FAISS (34 MB)
#         the CUDA tests under every speed switch (bf16 against CPU float32, batch invariance), how much
#         8 decode threads slow a launching thread against 8 decode processes, then encode throughput
#         from files, every lever beside the plain loop, and a profile per kind
#     bash benchmarks/gpu_session.sh run b     carry [".whl/b"], timeout_s 300: LanceDB, FAISS (60 MB)
#         ingest of a mixed corpus (clips too when PyAV is still there from run a) beside decode-only
#         and encode-only, with and without look-ahead, and the CUDA ingest test (decoding in processes,
#         ``--configs auto-procs``, is left out to fit; run a measures it through encode from files)
#     bash benchmarks/gpu_session.sh run c1    carry [".whl/c1"], timeout_s 60: half of a CUDA 13 FAISS
#     bash benchmarks/gpu_session.sh run c2    carry [".whl/c2"], timeout_s 420: the other half (the
#         wheel is 78 MB packed, so it travels in two calls), then FAISS on the GPU beside the CPU
#         (benchmarks/gpu_search.py, 1M x 1536) and tests/test_gpu_search.py when LanceDB is there (run b)
# Each step writes under $OUT as it goes, so a step cut short still returns the ones before it (8 files
# at most come back: keep it so). Run a should take about 9 minutes, run b about 4 (estimates: neither
# has run on a GPU yet), a machine's start 1-2: where the 15 device minutes allow one call, make it run a.
# SMOKE=1 runs the same steps on the tiny model with a few items (how this script is tested on a CPU).
set -u
cd "$(dirname "$0")/.."

TAGS=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
A=(av==19.0.2 faiss-cpu==1.15.1)
B=(lancedb==0.40.0 faiss-cpu==1.15.1 deprecation==2.1.0 pydantic==2.14.4 pydantic-core==2.50.5
   annotated-types==0.8.0 typing-inspection==0.4.5 lance-namespace==0.13.0 lance-namespace-urllib3-client==0.13.0)
C=(faiss-cuda==1.14.1.post4)  # FAISS built for CUDA 13 (the machine has its cuBLAS and runtime); 1.14.3 wants 12

pack() {  # pack NAME SPEC...: the wheels unpacked into one tree, xz-compressed to .whl/NAME/site.tar.xz
    local name=$1 tmp
    shift
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps "${TAGS[@]}" -d "$tmp/wheels" "$@" || return 1
    for w in "$tmp"/wheels/*.whl; do python3 -m zipfile -e "$w" "$tmp/site" || return 1; done
    mkdir -p ".whl/$name"
    tar -C "$tmp/site" -cf - . | xz -6 -T0 > ".whl/$name/site.tar.xz" || return 1
    rm -rf "$tmp"
    du -sh ".whl/$name"
}

case "${1:-}" in
prepare)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    rm -rf .whl/a .whl/b .whl/c .whl/c1 .whl/c2
    pack a "${A[@]}" && pack b "${B[@]}" && pack c "${C[@]}" || exit 1
    mkdir -p .whl/c1 .whl/c2
    split -b 40M .whl/c/site.tar.xz .whl/c/part.  # two calls carry it: part.aa, then part.ab
    mv .whl/c/part.aa .whl/c1/ && mv .whl/c/part.ab .whl/c2/ && rm -rf .whl/c
    du -sh .whl/c1 .whl/c2
    ;;
run)
    : "${OUT:?run this on the device machine, where \$OUT is set}"
    part=${2:-}
    case "$part" in a | b | c1 | c2) ;; *) echo "run a, b, c1 or c2"; exit 2 ;; esac
    export PYTHONUNBUFFERED=1
    mkdir -p /tmp/site /tmp/faiss-cuda-parts
    if [ "$part" = c1 ]; then  # only stash the first half where the next call finds it
        cp .whl/c1/part.* /tmp/faiss-cuda-parts/ && ls -la /tmp/faiss-cuda-parts && exit 0
        exit 1
    fi
    if [ "${SMOKE:-}" != 1 ]; then  # (a smoke run uses the packages of the Python it is given)
        for f in .whl/"$part"/*.tar.xz; do [ -e "$f" ] && { tar -xJf "$f" -C /tmp/site || exit 1; }; done
        if [ "$part" = c2 ]; then  # faiss-cuda owns the `faiss` module too: faiss-cpu's files go first
            [ -e /tmp/faiss-cuda-parts/part.aa ] || { echo "run c1 first, on this same warm machine"; exit 1; }
            rm -rf /tmp/site/faiss /tmp/site/faiss_cpu*
            cat /tmp/faiss-cuda-parts/part.aa .whl/c2/part.ab | tar -xJf - -C /tmp/site || exit 1
        fi
    fi
    export PYTHONPATH=/tmp/site:$PWD
    {
        date -u
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
        echo "cores $(nproc)"
        python3 -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
        for m in av faiss lancedb; do python3 -c "import $m; print('$m', $m.__version__)" 2>&1 | tail -1; done
    } > "$OUT/env-$part.txt" 2>&1
    cat "$OUT/env-$part.txt"
    have_av=1
    python3 -c "import av" 2>/dev/null || have_av=0
    if [ "${SMOKE:-}" = 1 ]; then
        model=(); n_enc=(--n text=16,image=8,video=4); n_ing=(--images 8 --videos $((2 * have_av)) --texts 8)
        contention=(--workers 2 --n 4 --ops 20000)
    else
        model=(--random 2b); n_enc=(--n text=1024,image=256,video=48)
        n_ing=(--images 256 --videos $((32 * have_av)) --texts 256)
        contention=(--workers 8 --n 16 --ops 200000)
    fi
    if [ "$part" = a ]; then
        # 1. faithfulness under every speed switch (ingest's test needs LanceDB: run b)
        timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "not ingest" 2>&1 |
            tee "$OUT/test_gpu-a.log" | tail -15
        # 2. the GIL: a launching thread beside decode threads, and beside decode processes (speed switch
        #    processes); its table goes to the top of encode.log (8 files at most come back)
        timeout 60 python3 benchmarks/launch_contention.py --kinds image,video "${contention[@]}" --repeats 3 \
            --json "$OUT/contention.json" 2>&1 | tee "$OUT/encode.log" | grep -v -i warn
        # 3. throughput from files, every lever beside the plain loop, alternating rounds; profiles
        mkdir -p "$OUT/profiles"
        # (default, what users get: see unite_search.speed.Speed)
        timeout 380 python3 benchmarks/encode_throughput.py "${model[@]}" --from-files "${n_enc[@]}" --repeats 3 \
            --speeds none,vision_runs,default,default+overlap,default+compile,default+processes,all,all@65536 \
            --profile "$OUT/profiles" --json "$OUT/encode.json" 2>&1 | tee -a "$OUT/encode.log" | grep -v -i warn
    elif [ "$part" = b ]; then
        if [ $have_av = 1 ]; then  # the tests' fixtures write clips with PyAV
            timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k ingest 2>&1 |
                tee "$OUT/test_gpu-b.log" | tail -5
        else
            echo "PyAV is not here (a fresh machine, not the one of run a): no clips, no ingest test" |
                tee "$OUT/test_gpu-b.log"
        fi
        timeout 230 python3 benchmarks/ingest_throughput.py "${model[@]}" "${n_ing[@]}" --configs auto,auto-noahead \
            --repeats 3 --json "$OUT/ingest.json" 2>&1 | tee "$OUT/ingest.log" | grep -v -i warn
    elif [ "$part" = c2 ]; then
        # the wheel's FAISS links CUDA 13's cuBLAS and runtime: those of the machine's nvidia-* packages
        nvlibs=$(python3 -c "
import os
try:
    import nvidia
except ImportError:
    raise SystemExit
found = {d for root in nvidia.__path__ for d, _, files in os.walk(root)
         if any(f.startswith(('libcublas.so', 'libcudart.so')) for f in files)}
print(':'.join(sorted(found)))")
        export LD_LIBRARY_PATH=${nvlibs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >> "$OUT/env-$part.txt"
        python3 -c "import faiss; print('faiss', faiss.__version__, 'GPUs', faiss.get_num_gpus())" 2>&1 |
            tee "$OUT/faiss-gpu.txt"
        if python3 -c "import lancedb, av" 2>/dev/null; then
            timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_search.py 2>&1 |
                tee "$OUT/test_gpu_search.log" | tail -8
        else
            echo "tests/test_gpu_search.py not run: it needs LanceDB and PyAV (runs a and b first)" |
                tee "$OUT/test_gpu_search.log"
        fi
        rows=1000000; [ "${SMOKE:-}" = 1 ] && rows=20000
        timeout 270 python3 benchmarks/gpu_search.py --rows $rows --dim 1536 --out "$OUT/gpu_search.json" 2>&1 |
            tee "$OUT/gpu_search.log" | tail -30
    fi
    ls -la "$OUT"
    ;;
*)
    sed -n '2,23p' "$0"
    exit 2
    ;;
esac
