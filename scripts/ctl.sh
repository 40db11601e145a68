#!/usr/bin/env bash
# Operator control of a running ringtrader, through its supervisor's unix socket
# (processes/supervisor/control.py has the protocol and the socket path rule).
#
#   scripts/ctl.sh status                      # trading state, breaker, decisions, positions, processes
#   scripts/ctl.sh halt                        # HALTED + cancel-all (the kill switch)
#   scripts/ctl.sh resume                      # ACTIVE again (the only way out of a breaker trip)
#   scripts/ctl.sh reduce-only                 # only orders that reduce a position
#   scripts/ctl.sh flatten                     # REDUCE_ONLY + an exit order for every open position
#   scripts/ctl.sh status --instance NAME      # another instance's default socket
#   scripts/ctl.sh halt --socket PATH          # an explicit supervisor.control_socket
#   scripts/ctl.sh status --config my.json     # the instance / control_socket of that config
#   scripts/ctl.sh status --json               # the reply as JSON
#
# Without --instance/--socket/--config: config/system.json's, with the same
# RINGTRADER__INSTANCE / RINGTRADER__SUPERVISOR__CONTROL_SOCKET overrides the
# supervisor applies. Exit codes: 0 ok, 1 refused, 2 usage error, 3 no system
# running, 4 sent but the new state not confirmed within 2 s.
#
# Uses the project's venv when it exists, else python3: the client needs only
# the standard library, and a kill switch must not wait for (or fail on) an
# install, so unlike start.sh this never creates or updates the venv.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
here="$PWD"
cd "$root"
source scripts/_venv.sh   # VENV: $RINGTRADER_VENV or ./.venv
cd "$here"                # relative --socket / --config paths are the caller's
py="$VENV/bin/python"
if [ ! -x "$py" ]; then
    py="$(command -v python3 || true)"
    [ -n "$py" ] || { echo "ctl: no $VENV/bin/python and no python3 on PATH" >&2; exit 1; }
fi
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m processes.supervisor.control "$@"
