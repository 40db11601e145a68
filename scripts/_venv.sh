# Shared by start.sh and test.sh: create/reuse .venv and install the project.
# ensure_venv [extra]: installs ".[extra]" editable when the venv is new or
# pyproject.toml is newer than the last install, then compiles the numba
# kernels into the keyed cache (core/numba_cache.py) so the first start is warm.
VENV="${RINGTRADER_VENV:-$PWD/.venv}"
ensure_venv() {
    local extra="${1:-}"
    local spec="."
    [ -n "$extra" ] && spec=".[$extra]"
    local stamp="$VENV/.ringtrader-installed${extra:+-$extra}"
    if [ ! -x "$VENV/bin/python" ]; then
        local py="${PYTHON:-}"
        if [ -z "$py" ]; then
            for c in python3 python3.12 python3.11; do
                if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then py="$c"; break; fi
            done
        fi
        [ -n "$py" ] || { echo "ringtrader needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
        "$py" -m venv "$VENV" || { echo "could not create $VENV (on Debian: apt-get install python3-venv)" >&2; exit 1; }
        "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "installing ringtrader$([ -n "$extra" ] && echo "[$extra]") into $VENV ..." >&2
        "$VENV/bin/python" -m pip install -q -e "$spec" >&2
        touch "$stamp"
        "$VENV/bin/python" -m core.numba_cache --warm config/system.json >&2 \
            || echo "warning: could not warm the numba cache; the first start compiles the kernels instead" >&2
    fi
}
