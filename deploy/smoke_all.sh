#!/usr/bin/env bash
# Every shipped space's smoke corner through `ray job submit` on a fixed 2-CPU head (127.0.0.1, token
# auth), one after the other; prints one line per space (exit status, seconds) and exits non-zero if any
# failed. What a user's first cluster run does, on the smallest cluster a smoke corner must fit.
#
#   bash deploy/smoke_all.sh [STORAGE]        # default STORAGE: a new temporary directory
set -uo pipefail
cd "$(dirname "$0")/.."
storage=${1:-$(mktemp -d /tmp/mmsn-smoke-all-XXXXXX)}
mkdir -p "$storage"
export RAY_AUTH_MODE=token PATH="$PWD/.venv/bin:$PATH"
port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dash=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ray start --head --node-ip-address=127.0.0.1 --port="$port" --dashboard-host=127.0.0.1 \
    --dashboard-port="$dash" --num-cpus=2 > "$storage/ray_start.log" 2>&1 || { cat "$storage/ray_start.log"; exit 1; }
trap 'ray stop --force > /dev/null 2>&1' EXIT
failed=0
for space in search_spaces/*.yaml; do
    name=$(basename "$space" .yaml)
    start=$(date +%s)
    ray job submit --address="http://127.0.0.1:$dash" --working-dir . -- \
        python -m trainables.sweep "$space" --smoke --storage "$storage/experiments" > "$storage/$name.log" 2>&1
    rc=$?
    [ "$rc" -eq 0 ] || failed=1
    echo "$name: rc $rc, $(( $(date +%s) - start )) s ($storage/$name.log)"
done
exit "$failed"
