# sdserve's container image. GPU (default): a CUDA runtime base with the CUDA build of torch.
#   docker build -t sdserve .
# CPU only:
#   docker build -t sdserve:cpu --build-arg BASE_IMAGE=ubuntu:24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
# Run (the model repository read-only, engines in a volume that outlives the container):
#   docker run --gpus all -p 8000-8002:8000-8002 -v $PWD/model_repository:/models:ro \
#     -v sdserve-engines:/var/cache/sdserve sdserve [serve FLAGS]
# The command is scripts/container-entrypoint.sh (its header lists the environment variables).

ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG NODE_IMAGE=node:20-bookworm-slim

# 1. The TypeScript core, built, with production dependencies only
FROM ${NODE_IMAGE} AS core
WORKDIR /build
COPY package.json package-lock.json tsconfig.json ./
RUN npm ci --no-audit --no-fund
COPY src ./src
COPY tests ./tests
RUN npm run build && npm prune --omit=dev && rm -rf dist/tests

# 2. The backends' Python: torch from TORCH_INDEX_URL, the rest at the versions requirements.txt pins
FROM ${BASE_IMAGE} AS python
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "$(grep '^torch==' /tmp/requirements.txt)" \
 && grep -E '^(diffusers|transformers|safetensors|numpy|pillow|torchsde|trampoline|scipy)==' /tmp/requirements.txt > /tmp/runtime.txt \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/runtime.txt

# 3. The image: Node's binary, the venv, the server; a non-root user; tini as PID 1
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --user-group sdserve \
 && mkdir -p /models /var/cache/sdserve \
 && chown sdserve:sdserve /var/cache/sdserve
COPY --from=core /usr/local/bin/node /usr/local/bin/node
COPY --from=python /opt/venv /opt/venv
WORKDIR /opt/sdserve
COPY --from=core /build/package.json ./
COPY --from=core /build/node_modules ./node_modules
COPY --from=core /build/dist ./dist
COPY bin ./bin
COPY proto ./proto
COPY python ./python
COPY web ./web
COPY scripts/container-entrypoint.sh ./scripts/container-entrypoint.sh
ENV SDSERVE_PYTHON=/opt/venv/bin/python \
    SDSERVE_MODEL_REPOSITORY=/models \
    SDSERVE_ENGINE_CACHE=/var/cache/sdserve \
    HOME=/home/sdserve
VOLUME ["/models", "/var/cache/sdserve"]
EXPOSE 8000 8001 8002
USER 10001:10001
# Live once the server answers; a model's first engine build can take minutes, hence the start period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
  CMD ["/opt/sdserve/scripts/container-entrypoint.sh", "probe", "/v2/health/live"]
# tini forwards SIGTERM to the server (which drains, then exits 0) and reaps orphaned processes.
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/sdserve/scripts/container-entrypoint.sh"]
CMD ["serve"]
