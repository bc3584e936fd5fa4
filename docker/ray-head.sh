#!/bin/sh
# The Ray head node of the team stack; docker-compose.yml and the native tests (tests/services.py) run this file.
# Extra arguments go to `ray start` (the tests pass free ports for the agents).
#   RAY_AUTH_MODE=token, RAY_AUTH_TOKEN  the cluster's shared token (Ray 2.60 turns token auth on for `ray start`;
#                                        every node and every driver needs the same one)
#   RAY_PORT (default 6379), RAY_NODE_IP (default: this host's address), RAY_NUM_CPUS, RAY_NUM_GPUS (default:
#   detected), RAY_TEMP_DIR (default Ray's)
set -eu
: "${RAY_AUTH_TOKEN:?set RAY_AUTH_TOKEN (the same on every node and driver)}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}" RAY_AUTH_TOKEN
set -- --head --port "${RAY_PORT:-6379}" --node-ip-address "${RAY_NODE_IP:-$(hostname -i | cut -d' ' -f1)}" \
    --include-dashboard false ${RAY_NUM_CPUS:+--num-cpus "$RAY_NUM_CPUS"} ${RAY_NUM_GPUS:+--num-gpus "$RAY_NUM_GPUS"} \
    ${RAY_TEMP_DIR:+--temp-dir "$RAY_TEMP_DIR"} --block "$@"
exec ray start "$@"
