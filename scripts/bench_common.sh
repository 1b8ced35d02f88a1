# Shared by the benchmark scripts (sourced, not run): finds or builds the wick binary and
# the model file.
#     WICK=path     wick binary (default target/release/wick)
#     SKIP_BUILD=1  do not run `cargo build --release`
#     MODEL=path    GGUF to use instead of `wick model-path`
# Sets WICK and MODEL, or exits with a message.
WICK="${WICK:-target/release/wick}"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo ">> cargo build --release" >&2
    cargo build --release >&2
fi
[[ -x "$WICK" ]] || { echo "$WICK not found (build failed?)" >&2; exit 1; }
if [[ -z "${MODEL:-}" ]]; then
    MODEL="$("$WICK" model-path | tail -n 1)"
fi
[[ -f "$MODEL" ]] || { echo "model file not found: '$MODEL' (set MODEL=path.gguf)" >&2; exit 1; }
