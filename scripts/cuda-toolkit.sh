#!/usr/bin/env bash
# Installs a CUDA 13.0 toolkit from NVIDIA's Python wheels into one prefix, so that
# `cargo build --release --features cuda` works on a machine with no GPU and no system
# CUDA (a 2-core CI box, a laptop). The binary runs on any machine; on one with an NVIDIA
# driver for CUDA 13.0 or newer (driver 580+) and the CUDA 13 cuBLAS/cuRAND libraries it
# runs on the GPU.
#
#   scripts/cuda-toolkit.sh [PREFIX]        # default PREFIX: .cuda (git-ignored)
#   eval "$(scripts/cuda-toolkit.sh --env [PREFIX])"   # print/export the environment only
#   scripts/cuda-toolkit.sh --compiler PREFIX  # the compiler part alone (nvcc, ptxas, the
#                                              # runtime's headers and static library; about
#                                              # 100 MB of wheels): enough to build wick with
#                                              # `--features cuda` and to compile
#                                              # kernels/*.cu, which CI does
#
# The full toolkit adds cuBLAS, cuRAND and NVRTC (shared libraries, about 800 MB): the
# binary loads them at run time on the GPU machine (`LD_LIBRARY_PATH=PREFIX/lib`), where a
# CUDA 13 runtime image or toolkit also has them. Building never needs them: the binary
# links no CUDA library but the runtime's static one (build.rs), and cudarc opens the
# driver, cuBLAS and cuRAND with dlopen (vendor/candle-core/WICK.md).
#
# Why pinned to 13.0: the GPU driver loads PTX only from a toolkit no newer than itself,
# and the GPU machines we target run a 13.0 driver. The CUDA 12 nvcc wheel
# (`nvidia-cuda-nvcc-cu12`) ships no `nvcc` driver program, so 13.x is the first line of
# wheels that can build anything.
#
# What the wheels lack and this script adds: the directory layout nvcc's nvcc.profile
# expects (`targets/x86_64-linux/{include,lib}`, `lib64`, `nvvm/`), made of symlinks into
# the unpacked wheels, and unversioned `libX.so` links (`libcublas.so -> libcublas.so.13`).
set -euo pipefail

CUDA_WHEEL_VERSION="${CUDA_WHEEL_VERSION:-13.0}"
# cuRAND has its own version line; 10.4.x is the CUDA 13.0 release.
CURAND_WHEEL_VERSION="${CURAND_WHEEL_VERSION:-10.4.0}"
# The compute capability candle's kernels are built for (one: 80 for A100, 90 for H100).
# wick's own kernels (kernels/*.cu) are built for sm_80 and sm_90 whatever it says.
: "${CUDA_COMPUTE_CAP:=90}"

env_only=0
compiler_only=0
if [[ "${1:-}" == "--env" ]]; then
    env_only=1
    shift
elif [[ "${1:-}" == "--compiler" ]]; then
    compiler_only=1
    shift
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${1:-$root/.cuda}"
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

print_env() {
    cat <<EOF
export CUDA_ROOT="$prefix"
export CUDA_PATH="$prefix"
export CUDA_TOOLKIT_ROOT_DIR="$prefix"
export CUDA_COMPUTE_CAP="$CUDA_COMPUTE_CAP"
export PATH="$prefix/bin:\$PATH"
export LD_LIBRARY_PATH="$prefix/lib64\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
EOF
}

if [[ $env_only == 1 ]]; then
    print_env
    exit 0
fi

if [[ -x "$prefix/bin/nvcc" && -e "$prefix/lib64/libcudart_static.a" && ( $compiler_only == 1 || -e "$prefix/lib64/libcublas.so" ) ]]; then
    echo "CUDA toolkit already in $prefix" >&2
else
    wheels="$prefix/.wheels"
    mkdir -p "$wheels"
    # One version line for every component; pip picks the newest 13.0.x of each.
    specs=(
        "nvidia-cuda-nvcc==${CUDA_WHEEL_VERSION}.*"
        "nvidia-cuda-crt==${CUDA_WHEEL_VERSION}.*"
        "nvidia-nvvm==${CUDA_WHEEL_VERSION}.*"
        "nvidia-cuda-runtime==${CUDA_WHEEL_VERSION}.*"
        "nvidia-cuda-cccl==${CUDA_WHEEL_VERSION}.*"
    )
    if [[ $compiler_only == 0 ]]; then
        specs+=(
            "nvidia-cuda-nvrtc==${CUDA_WHEEL_VERSION}.*"
            "nvidia-cublas==${CUDA_WHEEL_VERSION}.*"
            "nvidia-curand~=${CURAND_WHEEL_VERSION}"
        )
    fi
    echo "downloading ${specs[*]}" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
        --platform manylinux2010_x86_64 --python-version 3.11 \
        -d "$wheels" "${specs[@]}" >&2
    stage="$prefix/.stage"
    rm -rf "$stage"
    mkdir -p "$stage"
    for whl in "$wheels"/*.whl; do
        python3 -m zipfile -e "$whl" "$stage" >/dev/null
    done
    # Every CUDA 13 wheel puts its files under nvidia/cu13/{bin,include,lib,nvvm}.
    cp -a "$stage"/nvidia/cu13/. "$prefix"/
    rm -rf "$stage"
    chmod +x "$prefix"/bin/* "$prefix"/nvvm/bin/* 2>/dev/null || true

    # The layout nvcc.profile and build scripts expect.
    ln -sfn lib "$prefix/lib64"
    mkdir -p "$prefix/targets/x86_64-linux"
    ln -sfn ../../include "$prefix/targets/x86_64-linux/include"
    ln -sfn ../../lib "$prefix/targets/x86_64-linux/lib"
    ln -sfn ../../lib "$prefix/targets/x86_64-linux/lib64"
    # Unversioned names for the linker.
    for lib in "$prefix"/lib/lib*.so.*; do
        base="${lib##*/}"
        plain="${base%%.so.*}.so"
        [[ -e "$prefix/lib/$plain" ]] || ln -s "$base" "$prefix/lib/$plain"
    done
fi

"$prefix/bin/nvcc" --version >&2
echo "# CUDA toolkit in $prefix. To build: eval \"\$(scripts/cuda-toolkit.sh --env)\" && cargo build --release --features cuda" >&2
print_env
