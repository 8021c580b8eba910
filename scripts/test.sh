#!/usr/bin/env bash
# Install everything the tests need, then run them all. Safe to run again; used by .ci/run.
#   bash scripts/test.sh [pytest args]
# Python packages go into .venv in the checkout, never into the system Python (which Debian 12
# and Ubuntu 24.04 refuse anyway: PEP 668). System packages come from apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
# The install test runs the README's first command with Debian's own python3, which needs venv.
if [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} with apt-get"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

export PATH="$PWD/.venv/bin:$PATH"
python -m ruff check cardserver cli.py tests bench
python -m mypy
# the slowest tests are listed, so a suite creeping towards its 15-minute budget shows where
python -m pytest --durations=15 "$@"
