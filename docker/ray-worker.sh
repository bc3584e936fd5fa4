#!/bin/sh
# A Ray worker node of the team stack (scale it: docker compose up --scale ray-worker=N); docker-compose.yml and the
# native tests (tests/services.py) run this file. Extra arguments go to `ray start`.
#   RAY_HEAD_ADDRESS  host:port of the head (docker-compose: ray-head:6379)
#   RAY_AUTH_MODE=token, RAY_AUTH_TOKEN, RAY_NODE_IP, RAY_NUM_CPUS, RAY_NUM_GPUS: as for ray-head.sh
set -eu
: "${RAY_HEAD_ADDRESS:?set RAY_HEAD_ADDRESS (host:port of the Ray head)}"
: "${RAY_AUTH_TOKEN:?set RAY_AUTH_TOKEN (the same on every node and driver)}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}" RAY_AUTH_TOKEN
set -- --address "$RAY_HEAD_ADDRESS" --node-ip-address "${RAY_NODE_IP:-$(hostname -i | cut -d' ' -f1)}" \
    ${RAY_NUM_CPUS:+--num-cpus "$RAY_NUM_CPUS"} ${RAY_NUM_GPUS:+--num-gpus "$RAY_NUM_GPUS"} --block "$@"
exec ray start "$@"
