#!/usr/bin/env bash
# The project's test command: install what the tests need, then lint, type-check and test.
#
#   bash tests/run.sh [pytest args...]
#
# On Debian as root it installs the distribution registry (package docker-registry) and,
# when available, skopeo, umoci and the ctools peer's C tools (curl, jq, openssl, isal's
# igzip, zstd) with apt-get; elsewhere it says what to install and
# stops if there is no registry. It creates (or reuses) a virtualenv in .venv, installs
# the project with its test and lint extras, then runs ruff, mypy --strict and pytest.
#
# Environment: PYTHON (default python3, >= 3.11), IMAGEC_VENV (default .venv),
# IMAGEC_REGISTRY_BIN (a registry binary elsewhere than on PATH), CI (set: a missing
# registry fails the tests instead of skipping them).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${IMAGEC_VENV:-.venv}

say() { printf '==> %s\n' "$*"; }

have_registry() {
    if [ -n "${IMAGEC_REGISTRY_BIN:-}" ]; then [ -x "$IMAGEC_REGISTRY_BIN" ]; return; fi
    command -v docker-registry >/dev/null 2>&1 || command -v registry >/dev/null 2>&1 \
        || [ -x /usr/bin/docker-registry ]
}

is_debian_root() {
    [ "$(id -u)" = 0 ] && [ -r /etc/debian_version ] && command -v apt-get >/dev/null 2>&1
}

# --- system packages --------------------------------------------------------------------
missing=()
have_registry || missing+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v umoci >/dev/null 2>&1 || missing+=(umoci)
for tool in curl jq openssl igzip zstd; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${tool/#igzip/isal}")
done
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

if [ ${#missing[@]} -gt 0 ]; then
    if is_debian_root; then
        say "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
            # skopeo, umoci and the C tools are optional (their tests skip without them).
            required=()
            for pkg in "${missing[@]}"; do
                case $pkg in docker-registry|python3-venv) required+=("$pkg") ;; esac
            done
            if [ ${#required[@]} -gt 0 ]; then
                apt-get install -y --no-install-recommends "${required[@]}"
            fi
        fi
    else
        say "missing: ${missing[*]}"
        echo "    Debian/Ubuntu: sudo apt-get install ${missing[*]}"
        echo "    elsewhere: install the CNCF distribution registry (https://distribution.github.io/distribution/)"
        echo "    and point IMAGEC_REGISTRY_BIN at its binary; the others are optional."
        if ! have_registry; then
            echo "error: no distribution registry found; the tests need one." >&2
            exit 1
        fi
    fi
fi

# --- Python environment -----------------------------------------------------------------
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: $PYTHON is $("$PYTHON" --version 2>&1); imagec-pipe needs Python >= 3.11" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "creating virtualenv $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.imagec-pipe-installed"
want=$(cat pyproject.toml | "$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing imagec-pipe[test,lint] into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[test,lint]'
    echo "$want" > "$stamp"
fi

# --- checks -----------------------------------------------------------------------------
say "ruff check"
"$VENV/bin/python" -m ruff check .
say "mypy --strict"
"$VENV/bin/python" -m mypy --strict
say "pytest"
exec "$VENV/bin/python" -m pytest -q "$@"
