#!/usr/bin/env bash
# One entry point for newcomers and CI:  bash scripts/run.sh {setup|quickstart|test} [args...]
# setup       create .venv (if missing) and install mmsn with the tested versions (constraints.txt):
#             the runtime dependencies only
# quickstart  setup, then run the main job (the quickstart sweep) on the embedded synthetic default
# test        setup plus the dev extra (test references, pytest, ruff, mypy), then ruff, mypy and the
#             test suite (extra args go to pytest instead of the default two passes)
set -euo pipefail
cd "$(dirname "$0")/.."

setup() {
    local extra=${1:-}  # "" (runtime) or "dev"
    local python=${PYTHON:-python3}
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    # shellcheck disable=SC1091
    . .venv/bin/activate
    local want stamp=.venv/.mmsn-setup-stamp${extra:+-$extra}
    want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "== installing mmsn${extra:+ with its $extra extra} into .venv (first run: a few minutes)"
        python -m pip install --quiet --upgrade pip
        python -m pip install --quiet -c constraints.txt -e ".${extra:+[$extra]}"
        echo "$want" > "$stamp"
    fi
}

cmd=${1:-}
shift || true
case "$cmd" in
    setup) setup ;;
    quickstart)
        setup
        # Each run is a new experiment under experiments/; the synthetic cache is prepared once.
        mmsn sweep search_spaces/quickstart.yaml --storage experiments \
            --name "quickstart-$(date +%Y%m%d-%H%M%S)" "$@"
        ;;
    test)
        setup dev
        echo "== ruff"; ruff check .
        echo "== mypy"; mypy
        if [ $# -gt 0 ]; then
            python -m pytest -q "$@"
        else
            # The tests without Ray in parallel on the machine's cores, then the Ray sweeps one at a time
            # (each starts its own local Ray sized for the machine).
            python -m pytest -q -n auto -m "not slow"
            python -m pytest -q -m slow --durations=12  # their times: what to merge when CI is slow
        fi
        ;;
    *) echo "usage: bash scripts/run.sh {setup|quickstart|test} [args...]" >&2; exit 2 ;;
esac
