#!/usr/bin/env bash
# Start ringtrader: creates/reuses .venv (installing the project when needed),
# then runs the supervisor with config/system.json unless a config is given.
#
#   scripts/start.sh                                  # offline default (mode sim)
#   scripts/start.sh config/dedicated-host.json       # another config
#   scripts/start.sh --config my.json --duration 60   # extra args pass through
#   scripts/start.sh my.json --summary-json out.json
#
# Ctrl-C / SIGTERM: orderly shutdown (a second one forces it). Exit codes:
# 0 clean, 1 start-up failure or too many restarts, 2 config error.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv
config="config/system.json"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    config="$1"   # first argument without a leading dash: the config file
    shift
fi
for a in "$@"; do
    if [ "$a" = "--config" ] || [ "${a#--config=}" != "$a" ]; then
        exec "$VENV/bin/python" -m processes.supervisor "$@"
    fi
done
exec "$VENV/bin/python" -m processes.supervisor --config "$config" "$@"
