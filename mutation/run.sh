#!/usr/bin/env bash
# Mutation testing of the core modules with cosmic-ray (`make mutation`; not part of `make test`).
#
#   mutation/run.sh [MODULE ...]     MODULE: expressions engine tuning evaluate preprocess
#                                    pixels inference serve registry (default: all of them)
#
# Each module is mutated in a scratch copy of the tracked tree (.mutation/tree-<pid>), never in the
# checkout. mutation/warm.py runs the module's test files (the table below) once under coverage,
# then runs each mutant in a process forked from a warm one against only the tests that executed
# the mutated lines, quickest first, stopping at the first failure. Results: .mutation/<module>.sqlite (resumable: a re-run
# continues where it stopped) and .mutation/<module>.txt (survivors listed by cr-report).
# CONFIRM=1 runs the whole table entry before calling a mutant a survivor (see warm.py).
# RECHECK=1 re-runs only a session's survivors (after adding tests; RECHECK_LINES=636,657: only
# those on these lines of the module), leaving any unrun mutants
# for a later plain run (mutation/recheck.py); when the module's
# source changes, delete its session instead (a mutant is stored as an operator and the number
# of its occurrence in the file, which an edit shifts).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
PY="${PYTHON:-$REPO/.venv/bin/python}"
BIN="$(dirname "$PY")"
WORK="${MUTATION_DIR:-$REPO/.mutation}"
TIMEOUT="${MUTATION_TIMEOUT:-300}"

declare -A FILE TESTS
FILE[expressions]=pipelines/local/expressions.py
TESTS[expressions]="tests/test_local_expressions.py tests/test_expressions_edges.py tests/test_properties_expressions.py"
FILE[engine]=pipelines/local/engine.py
TESTS[engine]="tests/test_wrong_answers.py tests/test_local_engine.py tests/test_engine_edges.py"
FILE[tuning]=pipelines/local/tuning.py
TESTS[tuning]="tests/test_tuning_direction.py tests/test_tuning_edges.py tests/test_local_tuning.py"
FILE[evaluate]=steps/evaluate.py
TESTS[evaluate]="tests/test_evaluate_metrics.py"
FILE[preprocess]=steps/preprocess.py
TESTS[preprocess]="tests/test_wrong_answers.py tests/test_properties_splits.py tests/test_preprocess.py tests/test_preprocess_edges.py"
FILE[inference]=inference/inference.py
TESTS[inference]="tests/test_inference_boundaries.py tests/test_properties_decoder.py tests/test_inference.py tests/test_safe_extract.py tests/test_container_toolkits.py tests/test_inference_edges.py"
FILE[serve]=inference/serve.py
TESTS[serve]="tests/test_inference_boundaries.py tests/test_serve.py tests/test_runtime_api.py tests/test_serve_edges.py tests/test_serve_hostile.py"
FILE[registry]=pipelines/local/registry.py
FILE[pixels]=training/imgclf/pixels.py
TESTS[pixels]="tests/test_pixels.py tests/test_preprocess.py tests/test_preprocess_edges.py tests/test_properties_decoder.py"
# Functions left unmutated: command-line plumbing and plot styling, which give no answer
# the pipeline gates on (their mutants would be help texts, figure sizes and colours).
declare -A SKIP
SKIP[evaluate]="get_args_parser main plot_confusion_matrix"
SKIP[preprocess]="get_args_parser main"
SKIP[serve]="parse_args main"
TESTS[registry]="tests/test_wrong_answers.py tests/test_local_registry.py"

modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(expressions registry evaluate tuning engine preprocess pixels inference serve)
for module in "${modules[@]}"; do
  [ -n "${FILE[$module]:-}" ] || { echo "unknown module '$module' (known: ${!FILE[*]})" >&2; exit 2; }
done

mkdir -p "$WORK"
TREE="$WORK/tree-$$"  # one scratch copy per run: two runs (different modules) may go at once
server="" cosmic=""
# On exit or a signal: stop cosmic-ray first (it must not go on mutating a deleted tree), then
# the warm runner, then delete the tree.
cleanup() {
  for pid in $cosmic $server; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  rm -rf "$TREE" "$WORK"/warm-$$.*
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP
mkdir -p "$TREE"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$TREE")

for module in "${modules[@]}"; do
  config="$WORK/$module.toml"
  session="$WORK/$module.sqlite"
  tests=""
  for t in ${TESTS[$module]}; do [ -f "$TREE/$t" ] && tests="$tests $t"; done
  socket="$WORK/warm-$$.sock"
  sed -e "s|@FILE@|${FILE[$module]}|" -e "s|@TIMEOUT@|$TIMEOUT|" \
      -e "s|@TESTS@|$PY $HERE/warm.py run --stop-parent-on-loss --socket $socket|" \
      "$HERE/cosmic-ray.toml.in" > "$config"
  cd "$TREE"
  export PYTHONPATH="$TREE:$TREE/training:$TREE/tests" PYTHONDONTWRITEBYTECODE=1
  # the endpoint tests' tiny trained model: trained once for every mutant's test session
  export IMGPIPE_TEST_MODEL_CACHE="$WORK/test-cache"
  if [ ! -f "$session" ]; then
    "$BIN/cosmic-ray" init "$config" "$session"
    "$BIN/cr-filter-operators" "$session" "$config"
    "$BIN/cr-filter-pragma" "$session"
    "$PY" "$HERE/skip_functions.py" "$session" ${SKIP[$module]:-}
  fi
  "$PY" "$HERE/recheck.py" "$session" end > /dev/null  # an interrupted RECHECK's parked mutants
  if [ "${RECHECK:-0}" = 1 ]; then
    "$PY" "$HERE/recheck.py" "$session" begin "${RECHECK_LINES:-}"
  fi
  echo "== $module: ${FILE[$module]} against$tests"
  # The warm runner (mutation/warm.py): baseline run under coverage, then one fork per mutant.
  "$PY" "$HERE/warm.py" serve --socket "$socket" --module "${FILE[$module]}" \
      --log "$WORK/$module.log" $([ "${CONFIRM:-0}" = 1 ] && echo --confirm) $tests &
  server=$!
  while [ ! -S "$socket" ]; do
    kill -0 "$server" 2>/dev/null || { echo "warm runner for $module did not start" >&2; exit 1; }
    sleep 1
  done
  "$BIN/cosmic-ray" --verbosity=WARNING exec "$config" "$session" &
  cosmic=$!
  wait "$cosmic"  # in the background so that a signal reaches the trap at once
  cosmic=""
  [ "${RECHECK:-0}" != 1 ] || "$PY" "$HERE/recheck.py" "$session" end
  kill "$server"; wait "$server" 2>/dev/null || true
  server=""
  rm -f "$socket"
  "$BIN/cr-report" --show-diff --surviving-only "$session" > "$WORK/$module.txt" || true
  tail -n 4 "$WORK/$module.txt"
  "$PY" "$HERE/score.py" "$session"
  cd "$REPO"
done
