#!/usr/bin/env bash
# A newcomer's first hour, following the README: set up, run the quick demo, look at it with
# `icr status` and `icr report`, evaluate a model offline with a local judge, then make three typical
# mistakes, each of which must be refused before anything runs (exit 2, one sentence naming the
# field and the fix).
#
#   scripts/first_hour.sh [--clone] [WORK_DIR]
#
# WORK_DIR (default: a new temp folder) receives the outputs and one log per step. With --clone the
# script first clones this checkout into WORK_DIR/icr and works there, as from a fresh clone (its
# `make setup` then builds a new .venv: minutes); without it, it uses this checkout and its .venv.
# X-AlpacaEval is read from ../shared/data/x-alpacaeval (or $XALPACAEVAL); $ICR names another
# `icr` executable than the checkout's .venv/bin/icr.
#
# For each step it prints `STEP <name> rc=<exit code>` and then the step's first error line (or
# `-`), which tests/test_demo.py checks. It exits 1 if a step's exit code is not the expected one.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLONE=0
if [ "${1:-}" = "--clone" ]; then CLONE=1; shift; fi
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
BENCH=${XALPACAEVAL:-$ROOT/../shared/data/x-alpacaeval}
export HF_HUB_OFFLINE=1
if [ "$CLONE" = 1 ]; then
    git clone -q "$ROOT" "$WORK/icr" && ROOT=$WORK/icr
fi
cd "$ROOT" || exit 1
ICR=${ICR:-$ROOT/.venv/bin/icr}
FAILED=0

# step NAME EXPECTED_RC COMMAND...: run it, log it, print its exit code and first error line
step() {
    local name=$1 expected=$2
    shift 2
    "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    echo "STEP $name rc=$rc"
    grep -m1 -E "^(Error|error|ERROR)|Error:" "$WORK/$name.log" || echo "-"
    if [ "$rc" != "$expected" ]; then
        echo "  expected rc=$expected; last lines of $WORK/$name.log:"
        tail -5 "$WORK/$name.log" | sed 's/^/  | /'
        FAILED=1
    fi
}

RUN=$WORK/demo/runs/icr-demo
step setup 0 make setup
step demo 0 "$ICR" --progress log demo --quick --output "$WORK/demo"
step status 0 "$ICR" status "$RUN"
step report 0 "$ICR" report "$RUN"
step eval 0 "$ICR" eval --model embedded:smollm2-135m-instruct --prompts "$BENCH" --languages es --limit 2 \
    --judge hf --judge-model embedded:smollm2-135m-instruct --no-lc --max-new-tokens 8 --device cpu \
    --output "$WORK/eval"

# mistake 1: a prompts folder that is not there
step missing-prompts 2 "$ICR" run --data.prompts "$WORK/no-such-prompts" --output_dir "$WORK/runs"
# mistake 2: a misspelt key in the YAML config
printf 'name: typo\ngenerate:\n  temprature: 0.5\n' > "$WORK/typo.yaml"
step yaml-typo 2 "$ICR" run --config "$WORK/typo.yaml" --output_dir "$WORK/runs"
# mistake 3: the paper's judge without its API key
step no-judge-key 2 env -u OPENAI_API_KEY "$ICR" eval --model embedded:smollm2-135m-instruct --prompts "$BENCH" \
    --languages es --limit 2 --output "$WORK/eval-gpt4"

echo "logs and outputs: $WORK"
exit $FAILED
