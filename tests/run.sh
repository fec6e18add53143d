#!/usr/bin/env bash
# The whole test run: what `make test` and CI execute.
#   tests/run.sh            everything: engine + images, lint, unit/integration, all scenarios
#   tests/run.sh lint|unit|integration  one part (lint: yamllint, ansible-lint, role docs, ansible-test sanity;
#                                        integration: against real Dify, tests/real_dify)
#   tests/run.sh molecule [scenario...]   scenarios only (default: all)
# Ends with one summary line: "summary: N passed, N failed[, N skipped]".
# DIFY_TEST_PARALLEL=0 runs lint, sanity, unit and integration tests before the scenarios instead of
# beside them; DIFY_TEST_KEEP_GOING=0 then skips the scenarios when one of those failed.
# Scenarios run in two lanes side by side (molecule/lanes); DIFY_TEST_LANES=1 runs them one after
# the other. DIFY_TEST_LOGDIR: where step logs go (default .cache/test-logs).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$ROOT/ansible.cfg" PY_COLORS=0 ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
LOGDIR="${DIFY_TEST_LOGDIR:-$ROOT/.cache/test-logs}"
RUN_START=$(date +%s)
mkdir -p "$LOGDIR"

passed=0 failed=0 skipped=0
results=()
record() {  # name status seconds [note]
  results+=("$(printf '%-34s %-7s %5ss %s' "$1" "$2" "$3" "${4:-}")")
  case "$2" in PASS) passed=$((passed + 1)) ;; FAIL) failed=$((failed + 1)) ;; SKIP) skipped=$((skipped + 1)) ;; esac
}
step() {  # name command... ; output to a log, printed in full when the step fails
  local name=$1 log="$LOGDIR/$1.log" start rc
  shift
  start=$(date +%s)
  echo "== $name"
  "$@" >"$log" 2>&1
  rc=$?
  local secs=$(($(date +%s) - start))
  if [[ $rc -eq 0 ]]; then
    record "$name" PASS "$secs"; tail -n 3 "$log" | sed 's/^/   /'
  else
    record "$name" FAIL "$secs" "(log: $log)"; echo "-- $name failed (rc=$rc); last lines:"; tail -n 80 "$log"
  fi
  echo "== $name: $([[ $rc -eq 0 ]] && echo passed || echo FAILED) in ${secs}s"
}

# A step in the background (its own log), collected by wait_background: the real-Dify integration
# tests run beside the Molecule scenarios (different ports; both wait on I/O much of the time).
bg_pids=() bg_names=()
step_background() {  # name command...
  local name=$1
  shift
  echo "== $name: started in the background (log: $LOGDIR/$name.log)"
  (
    start=$(date +%s)
    "$@" >"$LOGDIR/$name.log" 2>&1
    rc=$?
    echo "$rc $(($(date +%s) - start))" >"$LOGDIR/$name.rc"
  ) &
  bg_pids+=("$!")
  bg_names+=("$name")
}
collect() {  # name: record the result a background step or a scenario left in $LOGDIR/<name>.rc
  local name=$1 log="$LOGDIR/$1.log" rc secs
  read -r rc secs <"$LOGDIR/$name.rc" || { rc=1 secs=0; }
  if [[ $rc == skip ]]; then
    record "$name" SKIP 0 "$secs"; return 0
  fi
  if [[ $rc -eq 0 ]]; then
    record "$name" PASS "$secs"; tail -n 3 "$log" | sed 's/^/   /'
  else
    record "$name" FAIL "$secs" "(log: $log)"; echo "-- $name failed (rc=$rc); last lines:"; tail -n 80 "$log"
  fi
  echo "== $name: $([[ $rc -eq 0 ]] && echo passed || echo FAILED) in ${secs}s"
}
wait_background() {
  local i
  for i in "${!bg_pids[@]}"; do
    wait "${bg_pids[$i]}"
    collect "${bg_names[$i]}"
  done
  bg_pids=() bg_names=()
}

# Everything scenarios of both lanes read is built here, once, before the lanes start (two lanes
# building one cache at the same time would race): the test host images, the base image's
# archive, the Dify stack's images and archive, the tiny models and the model servers' wheels.
prepare_host() {
  scripts/ensure-test-tools.sh || return 1
  scripts/ensure-docker.sh || return 1
  tests/images/build.sh || return 1
  tests/images/archive.sh dify-test/base:debian13 || return 1
  tests/images/stack/build.sh || return 1
  MS_CACHE="$ROOT/.cache/model_servers" ansible-playbook -i localhost, -e "ansible_python_interpreter=$ROOT/.venv/bin/python" \
    molecule/shared/tiny_models.yml
}

run_lint() {
  yamllint -s . && ansible-lint --offline -q && python scripts/role-docs.py --check
}

# ansible-test sanity on the collection dify_gpu.dify. ansible-test wants the real path to end in
# ansible_collections/<ns>/<name> (a symlink does not count) and reads its files from git, so the
# collection's own files (plugins, meta, galaxy.yml, ...) are copied, working-tree state, to a
# directory outside this repository. Each sanity test gets a venv from PyPI on first use
# (cached under ~/.ansible/test); their pip bootstrap script comes from a host that may be
# unreachable, so tests/sanity/get_pip.py (ensurepip + PyPI) stands in for it when absent.
# SANITY_TESTS: extra ansible-test arguments (e.g. "--test pylint").
run_sanity() {
  local dir pipver cache
  dir=$(mktemp -d "${TMPDIR:-/tmp}/dify-sanity.XXXXXX") || return 1
  local coll="$dir/ansible_collections/dify_gpu/dify"
  mkdir -p "$coll"
  git ls-files -co --exclude-standard -- galaxy.yml meta plugins LICENSE README.md CHANGELOG.md tests/sanity/ignore-*.txt |
    while read -r f; do [[ -f $f ]] && cp --parents "$f" "$coll/"; done
  pipver=$(python -c 'import os, re, ansible_test as t; print(re.search(r"pip=.([0-9.]+).", open(os.path.join(os.path.dirname(t.__file__), "_internal", "python_requirements.py")).read()).group(1))') || return 1
  cache="$HOME/.ansible/test/cache/get_pip_${pipver//./_}.py"
  [[ -f $cache ]] || { mkdir -p "$(dirname "$cache")" && cp tests/sanity/get_pip.py "$cache"; }
  local rc
  (cd "$coll" && ansible-test sanity --python "$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    --local --color no ${SANITY_TESTS:-})
  rc=$?
  rm -rf "$dir"
  return $rc
}

run_lint_and_sanity() { run_lint && run_sanity; }

pytest_dir() {  # dir: fail when nothing was collected
  python -m pytest -q -p no:cacheprovider --durations=15 "$1"
  local rc=$?
  [[ $rc -eq 5 ]] && { echo "no tests were collected in $1"; return 1; }
  return $rc
}

run_unit() { pytest_dir tests/unit; }

# Against REAL Dify (tests/real_dify: api + worker from upstream source, started once, torn down at the end).
run_integration() {
  scripts/ensure-test-tools.sh || return 1
  pytest_dir tests/integration
}

scenarios() {
  local all=() s
  for s in molecule/*/molecule.yml; do
    s=$(basename "$(dirname "$s")")
    [[ $s == _* || $s == shared || $s == default ]] && continue
    all+=("$s")
  done
  [[ -f molecule/default/molecule.yml ]] && all+=(default)
  echo "${all[@]}"
}

# molecule/lanes: which scenarios may run at the same time (see the file). lane_of SCENARIO prints
# its lane; lane_names the lanes in file order, lane_members LANE its scenarios in order.
lane_names() { grep -v '^\s*\(#\|$\)' molecule/lanes | awk '{print $1}'; }
lane_members() { grep -v '^\s*#' molecule/lanes | awk -v l="$1" '$1 == l {for (i = 2; i <= NF; i++) print $i}'; }
lane_of() { grep -v '^\s*#' molecule/lanes | awk -v s="$1" '{for (i = 2; i <= NF; i++) if ($i == s) print $1}'; }

# Molecule runs scenarios with fixed instance names on the host network: two runs of one lane on
# one machine would destroy each other's hosts. One lock per lane and machine serializes them (a
# second run waits); the lanes themselves share nothing (molecule/lanes).
MOLECULE_LOCK=${DIFY_TEST_MOLECULE_LOCK:-/tmp/dify-test-molecule}
molecule_locked() {  # lane scenario
  local lock="$MOLECULE_LOCK-$1.lock"
  (
    flock -n 9 || { echo "waiting for another Molecule run of lane $1 on this machine ($lock)"; flock 9; }
    molecule test -s "$2"
  ) 9>"$lock"
}

# One scenario, its result in $LOGDIR/molecule:<s>.rc ("rc seconds", or "skip why"); one progress
# line on stdout. run_scenarios collects the results.
run_scenario() {  # lane scenario
  local lane=$1 s=$2 image start rc secs name="molecule:$2"
  if [[ -f "molecule/$s/requires" ]]; then
    while read -r image; do
      [[ -z $image ]] && continue
      if ! docker image inspect "$image" >/dev/null 2>&1; then
        echo "== $name skipped: image $image was not built (see tests/images/build.sh output)"
        echo "skip (no $image)" >"$LOGDIR/$name.rc"
        return 0
      fi
    done <"molecule/$s/requires"
  fi
  echo "== $name: started in lane $lane (log: $LOGDIR/$name.log)"
  start=$(date +%s)
  molecule_locked "$lane" "$s" >"$LOGDIR/$name.log" 2>&1
  rc=$?
  secs=$(($(date +%s) - start))
  echo "$rc $secs" >"$LOGDIR/$name.rc"
  echo "== $name: $([[ $rc -eq 0 ]] && echo passed || echo FAILED) in ${secs}s (lane $lane)"
}

# The scenarios given, each lane's share in order, the lanes side by side (DIFY_TEST_LANES=1: one
# lane after the other). A scenario without a lane fails the run: molecule/lanes must name it.
run_scenarios() {  # scenario...
  local lane s pids=() mine
  for s in "$@"; do
    rm -f "$LOGDIR/molecule:$s.rc"
    [[ -n $(lane_of "$s") ]] && continue
    echo "== molecule:$s has no lane in molecule/lanes" | tee "$LOGDIR/molecule:$s.log"
    echo "1 0" >"$LOGDIR/molecule:$s.rc"
  done
  for lane in $(lane_names); do
    mine=()
    # the lane's order (molecule/lanes), of the scenarios asked for
    for s in $(lane_members "$lane"); do [[ " $* " == *" $s "* ]] && mine+=("$s"); done
    [[ ${#mine[@]} -eq 0 ]] && continue
    if [[ ${DIFY_TEST_LANES:-2} == 1 ]]; then
      for s in "${mine[@]}"; do run_scenario "$lane" "$s"; done
    else
      ( for s in "${mine[@]}"; do run_scenario "$lane" "$s"; done ) &
      pids+=("$!")
    fi
  done
  [[ ${#pids[@]} -gt 0 ]] && wait "${pids[@]}"
  for s in "$@"; do collect "molecule:$s"; done
}

summary() {
  echo
  echo "== results"
  printf '%s\n' "${results[@]}"
  local line="summary: $passed passed, $failed failed"
  [[ $skipped -gt 0 ]] && line+=", $skipped skipped"
  echo "total: $(($(date +%s) - RUN_START))s wall clock (steps marked background overlapped the scenarios)"
  echo "$line"
  [[ $failed -eq 0 ]]
}

what=${1:-all}
[[ $# -gt 0 ]] && shift
case "$what" in
  all)
    # The engine and the images first, alone: every scenario waits for them, and the background
    # steps finish inside the lanes' time anyway (started beside the image builds, they made
    # host-prepare take 530 s instead of 271 s from a cold cache, 2026-12-02).
    step host-prepare prepare_host
    # pytest and ansible-lint use one core each, the scenarios wait on containers much of the time:
    # the real-Dify integration tests, the unit tests, lint and sanity run in the background, beside
    # the scenarios (their results are collected at the end).
    if [[ ${DIFY_TEST_PARALLEL:-1} == 1 ]]; then
      step_background integration run_integration
      step_background unit run_unit
      step_background lint+sanity run_lint_and_sanity
    else
      step lint run_lint
      step sanity run_sanity
      step unit run_unit
      step integration run_integration
    fi
    if [[ $failed -eq 0 || ${DIFY_TEST_KEEP_GOING:-1} == 1 ]]; then
      # shellcheck disable=SC2046
      run_scenarios $(scenarios)
    fi
    wait_background
    ;;
  lint) step lint run_lint; step sanity run_sanity ;;
  unit) step unit run_unit ;;
  integration) step integration run_integration ;;
  molecule)
    step host-prepare prepare_host
    if [[ $# -gt 0 ]]; then list=("$@"); else read -r -a list <<<"$(scenarios)"; fi
    run_scenarios "${list[@]}"
    ;;
  *) echo "usage: tests/run.sh [all|lint|unit|integration|molecule [scenario...]]" >&2; exit 2 ;;
esac
summary
