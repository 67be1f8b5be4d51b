#!/bin/sh
# The container image's command (Dockerfile): `serve [FLAGS]` starts sdserve on the container's
# volumes and on every interface; `probe ROUTE` asks the HTTP service for ROUTE and exits 0 on a
# 200 (the image's HEALTHCHECK and Kubernetes exec probes), sending the API key when one is set.
# Anything else runs as a command. Every setting has an environment variable:
#   SDSERVE_MODEL_REPOSITORY (/models)   SDSERVE_ENGINE_CACHE (/var/cache/sdserve)
#   SDSERVE_HTTP_PORT (8000)  SDSERVE_GRPC_PORT (8001)  SDSERVE_METRICS_PORT (8002)
#   SDSERVE_EXIT_TIMEOUT_SECS (30)  SDSERVE_API_KEY (unset: no key)  SDSERVE_PYTHON (backends' Python)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
repository=${SDSERVE_MODEL_REPOSITORY:-/models}
engine_cache=${SDSERVE_ENGINE_CACHE:-/var/cache/sdserve}
http_port=${SDSERVE_HTTP_PORT:-8000}

command=${1:-serve}
[ $# -gt 0 ] && shift
case "$command" in
  serve)
    # exec: the server replaces this shell, so SIGTERM (from tini or the runtime) reaches it and drains.
    exec node "$here/bin/sdserve" serve \
      --model-repository "$repository" \
      --engine-cache-dir "$engine_cache" \
      --http-address 0.0.0.0 --grpc-address 0.0.0.0 --metrics-address 0.0.0.0 \
      --http-port "$http_port" \
      --grpc-port "${SDSERVE_GRPC_PORT:-8001}" \
      --metrics-port "${SDSERVE_METRICS_PORT:-8002}" \
      --exit-timeout-secs "${SDSERVE_EXIT_TIMEOUT_SECS:-30}" \
      "$@"
    ;;
  probe)
    route=${1:?usage: probe ROUTE, e.g. probe /v2/health/live}
    exec node --input-type=module -e '
      const [route, port] = process.argv.slice(1);
      const key = process.env.SDSERVE_API_KEY;
      const headers = key ? { authorization: `Bearer ${key}` } : {};
      try {
        const response = await fetch(`http://127.0.0.1:${port}${route}`, { headers, signal: AbortSignal.timeout(5000) });
        process.exit(response.status === 200 ? 0 : 1);
      } catch {
        process.exit(1);
      }' "$route" "$http_port"
    ;;
  *)
    exec "$command" "$@"
    ;;
esac
