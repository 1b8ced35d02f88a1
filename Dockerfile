# wick for the CPU (the plain image; Dockerfile.cuda is the CUDA one).
#   docker build -t wick .
#   docker run -p 8080:80 -v $PWD/data:/data wick
# serves the default model (fetched with pip into /data on first start) on port 80 with
# TGI's environment variables (MODEL_ID, PORT, MAX_BATCH_TOTAL_TOKENS, ...).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# CPU code for x86-64-v3 (AVX2 and FMA), not for the build machine.
RUN RUSTFLAGS="-C target-cpu=x86-64-v3" cargo build --release \
    && cp target/release/wick /usr/local/bin/wick

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/wick /usr/local/bin/wick
ENV WICK_CACHE=/data HF_HOME=/data/hf PORT=80 WICK_DEVICE=cpu
VOLUME /data
EXPOSE 80
ENTRYPOINT ["wick"]
CMD ["serve"]
