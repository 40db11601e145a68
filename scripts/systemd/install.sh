#!/usr/bin/env bash
# Install ringtrader as a systemd service (scripts/systemd/ringtrader.service, filled in for this host).
#
#   sudo scripts/systemd/install.sh --create-user                          # config/system.json, user ringtrader
#   sudo scripts/systemd/install.sh --config config/dedicated-host.json    # another config
#   scripts/systemd/install.sh --dry-run [...]                             # print what it would do, change nothing
#   scripts/systemd/install.sh --print-unit [...]                          # print the filled-in unit only
#
# Options: --config PATH (relative to the project), --user NAME (default ringtrader), --group NAME
# (default: the user's), --create-user (a system user with no home and no shell when it is missing),
# --env-file PATH (default /etc/ringtrader/ringtrader.env), --unit-dir DIR (default /etc/systemd/system),
# --cpus LIST|all (the unit's CPUAffinity; default: the online CPUs that are neither isolated nor given to
# a busy-spinning process of the placement), --no-warm (skip compiling the numba kernels).
#
# Steps, each skipped when already done (running it twice changes nothing the second time):
#   1. the venv (scripts/_venv.sh): created or updated here, never by the service when it starts;
#   2. the config is read: the paths the service writes (journal, recordings, log file) and the CPUs;
#      the supervisor's own config check is run as it will run under the unit's CPUAffinity;
#   3. the user and group (--create-user), and the writable directories, owned by that user;
#   4. the environment file, 0600 root:root, copied from ringtrader.env.example when missing. This script
#      never writes a key or a secret: put them there yourself (systemd reads the file as root);
#   5. the unit, filled in, checked with `systemd-analyze verify`, installed when it differs;
#   6. the numba kernels compiled as the service user into the service's cache (minutes, once);
#   7. systemctl daemon-reload; then the next steps are printed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
project="$(cd "$here/../.." && pwd -P)"
template="$here/ringtrader.service"
example="$here/ringtrader.env.example"
unit_name="ringtrader.service"
cache_dir="/var/cache/ringtrader"   # CacheDirectory=ringtrader (%C/ringtrader) of the unit
socket_path="/run/ringtrader/control.sock"   # RuntimeDirectory=ringtrader (%t/ringtrader) of the unit

config="config/system.json"
user="ringtrader"
group=""
create_user=0
env_file="/etc/ringtrader/ringtrader.env"
unit_dir="/etc/systemd/system"
cpus=""
warm=1
dry_run=0
print_unit=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: $*" >&2; exit 1; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --config) need_arg "$@"; config="$2"; shift 2 ;;
        --user) need_arg "$@"; user="$2"; shift 2 ;;
        --group) need_arg "$@"; group="$2"; shift 2 ;;
        --create-user) create_user=1; shift ;;
        --env-file) need_arg "$@"; env_file="$2"; shift 2 ;;
        --unit-dir) need_arg "$@"; unit_dir="$2"; shift 2 ;;
        --cpus) need_arg "$@"; cpus="$2"; shift 2 ;;
        --no-warm) warm=0; shift ;;
        --dry-run) dry_run=1; shift ;;
        --print-unit) print_unit=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
group="${group:-$user}"
case "$config" in /*) ;; *) config="$project/$config" ;; esac
[ -f "$config" ] || die "config file not found: $config"
config="$(cd "$(dirname "$config")" && pwd -P)/$(basename "$config")"
case "$env_file" in /*) ;; *) die "--env-file must be an absolute path, got '$env_file'" ;; esac
[[ "$user" =~ ^[a-z_][a-z0-9_-]*$ ]] || die "--user '$user' is not a valid user name"
[[ "$group" =~ ^[a-z_][a-z0-9_-]*$ ]] || die "--group '$group' is not a valid group name"
for p in "$project" "$config" "$env_file"; do
    [[ "$p" =~ [[:space:]] ]] && die "paths with white space cannot go into a unit file: '$p'"
done

# Messages: to stdout, or to stderr with --print-unit (stdout is then the unit alone).
if [ "$print_unit" = 1 ]; then exec 3>&2; else exec 3>&1; fi
say() { printf '%s\n' "$*" >&3; }
warn() { printf 'warning: %s\n' "$*" >&3; }
# run [--show TEXT] CMD...: executed (and shown, as TEXT when given) for real, only shown with --dry-run
run() {
    local shown="$*"
    if [ "$1" = --show ]; then shown="$2"; shift 2; fi
    if [ "$dry_run" = 1 ]; then say "  would run: $shown"; else say "  + $shown"; "$@"; fi
}
if [ "$dry_run" = 0 ] && [ "$print_unit" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "installing needs root (try: sudo $0 ...); --dry-run and --print-unit do not"
fi

# -- 1. the venv ------------------------------------------------------------------------------------------
VENV="${RINGTRADER_VENV:-$project/.venv}"
py="$VENV/bin/python"
owner="$(stat -c %U "$project")"
venv_cmd=(env RINGTRADER_VENV="$VENV" bash -c 'cd "$1" && source scripts/_venv.sh && ensure_venv' _ "$project")
venv_shown="(cd $project && source scripts/_venv.sh && ensure_venv)  [RINGTRADER_VENV=$VENV]"
if [ "$(id -u)" = 0 ] && [ "$owner" != root ]; then
    venv_cmd=(runuser -u "$owner" -- "${venv_cmd[@]}")   # the tree keeps one owner
    venv_shown="runuser -u $owner -- $venv_shown"
fi
if [ "$print_unit" = 0 ]; then
    say "1. venv $VENV (created or updated when pyproject.toml changed; compiles the kernels then)"
    run --show "$venv_shown" "${venv_cmd[@]}"
fi
[ -x "$py" ] || die "no $py: the config is read with the project's venv (run without --dry-run, or scripts/start.sh once)"

# -- 2. what the config needs ------------------------------------------------------------------------------
analysis="$(cd "$project" && "$py" - "$config" "$cpus" <<'PY'
"""Paths the service writes, the unit's CPUs, and the supervisor's config check under those CPUs."""
import os
import sys
from pathlib import Path

from core.config import load_config
from core.errors import ConfigError

config_path, cpus_arg = sys.argv[1], sys.argv[2]
project = Path.cwd()


def cpu_list(text):
    out = set()
    for part in text.replace(" ", ",").split(","):
        if not part or part == "(null)":
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def sysfs_cpus(name):
    try:
        return cpu_list(Path(f"/sys/devices/system/cpu/{name}").read_text().strip())
    except (OSError, ValueError):
        return set()


try:
    cfg = load_config(config_path, env={}, host_cpus=None)
except ConfigError as exc:
    print(f"ERROR the config is invalid: {exc}")
    sys.exit(0)
online = sysfs_cpus("online") or set(range(os.cpu_count() or 1))
isolated = sysfs_cpus("isolated")
spinning = {p.name: set(p.cpus) for p in cfg.placement.values() if p.stages and p.idle.strategy == "busy_spin"}
if cpus_arg == "all":
    unit_cpus = online
elif cpus_arg:
    unit_cpus = cpu_list(cpus_arg)
    if not unit_cpus <= online:
        print(f"ERROR --cpus {cpus_arg}: CPUs {sorted(unit_cpus - online)} are not online (online: {sorted(online)})")
else:
    unit_cpus = online - isolated - set().union(*spinning.values()) or online
print("CPUS " + " ".join(str(c) for c in sorted(unit_cpus)))

for name, cs in spinning.items():
    if isolated and not cs <= isolated:
        print(f"WARN {name} busy-spins on CPUs {sorted(cs - isolated)}, which are not isolated (isolcpus: "
              f"{sorted(isolated)}): other tasks and interrupts will share them")
    elif not isolated:
        print(f"WARN {name} busy-spins on CPUs {sorted(cs)} but this kernel isolates no CPU (no isolcpus=): "
              "see README, 'Deploying with systemd', for the boot parameters")
rt = [p.name for p in cfg.placement.values() if p.rt_priority is not None]
if rt:
    try:
        runtime = int(Path("/proc/sys/kernel/sched_rt_runtime_us").read_text())
    except (OSError, ValueError):
        runtime = -1
    if runtime != -1 and spinning:
        print(f"WARN kernel.sched_rt_runtime_us={runtime}: SCHED_FIFO busy-spinning processes ({', '.join(rt)}) "
              f"are throttled {(1_000_000 - runtime) // 1000} ms in every second; see README")
    shared = sorted({c for p in cfg.placement.values() if p.rt_priority is not None for c in p.cpus} & unit_cpus)
    if shared and spinning:
        print(f"WARN SCHED_FIFO processes run on CPUs {shared}, which the supervisor shares (CPUAffinity): "
              "a busy-spinning one would starve it")

# The supervisor checks the config under its own CPUs: do it here exactly as it will under CPUAffinity=.
try:
    os.sched_setaffinity(0, unit_cpus)
    load_config(config_path, env={})
except ConfigError as exc:
    print(f"ERROR under CPUAffinity={' '.join(map(str, sorted(unit_cpus)))} the supervisor refuses this config "
          f"(exit 2): {exc}. core.config checks placement cpus against the process's own CPU affinity; give "
          "--cpus a list that holds them until that check uses the online CPUs")
except OSError as exc:
    print(f"WARN could not check the config under CPUs {sorted(unit_cpus)}: {exc}")


def writable(path, is_dir=True):
    p = Path(path)
    p = p if p.is_absolute() else project / p
    print(f"RW {p if is_dir else p.parent}")


writable(cfg.execution.journal_dir)  # processes.journal.journal_path: relative to the project
if cfg.market_data.recording_dir:
    writable(cfg.market_data.recording_dir)  # relative to WorkingDirectory=, the project
if cfg.logging.file:
    writable(cfg.logging.file, is_dir=False)
PY
)"
cpu_affinity=""
rw_dirs=()
errors=0
while IFS= read -r line; do
    case "$line" in
        "CPUS "*) cpu_affinity="${line#CPUS }" ;;
        "RW "*) rw_dirs+=("${line#RW }") ;;
        "WARN "*) warn "${line#WARN }" ;;
        "ERROR "*) printf 'install.sh: %s\n' "${line#ERROR }" >&2; errors=1 ;;
        *) [ -z "$line" ] || say "$line" ;;
    esac
done <<< "$analysis"
[ "$errors" = 0 ] || exit 1
[ -n "$cpu_affinity" ] || die "could not work out the CPUs of the unit"
for d in "${rw_dirs[@]}"; do
    [[ "$d" =~ [[:space:]] ]] && die "paths with white space cannot go into a unit file: '$d'"
done

protect_home="yes"
for p in "$project" "$VENV" "$(readlink -f "$py")"; do
    case "$p" in /home/*|/root/*|/run/user/*)
        protect_home="read-only"
        [ "$print_unit" = 1 ] || warn "$p is under /home, /root or /run/user: ProtectHome=read-only instead of yes (move the project to /opt to hide home directories)"
        break ;;
    esac
done

# -- the unit, filled in -----------------------------------------------------------------------------------
rw_paths=""
for d in "${rw_dirs[@]}"; do rw_paths+="${rw_paths:+ }-$d"; done
unit="$(<"$template")"
unit="${unit//@PROJECT_DIR@/$project}"
unit="${unit//@VENV@/$VENV}"
unit="${unit//@CONFIG@/$config}"
unit="${unit//@USER@/$user}"
unit="${unit//@GROUP@/$group}"
unit="${unit//@ENV_FILE@/$env_file}"
unit="${unit//@CPUS@/$cpu_affinity}"
unit="${unit//@RW_PATHS@/$rw_paths}"
unit="${unit//@PROTECT_HOME@/$protect_home}"
left="$(grep -o '@[A-Z_]*@' <<< "$unit" | sort -u | tr '\n' ' ' || true)"
[ -z "$left" ] || die "unit template has unfilled fields: $left"
if [ "$print_unit" = 1 ]; then
    printf '%s\n' "$unit"
    exit 0
fi

# -- 3. user, group, writable directories ------------------------------------------------------------------
say "2. config $config: CPUAffinity=$cpu_affinity, writable: ${rw_dirs[*]} $cache_dir"
say "3. user $user, group $group"
if id -u "$user" >/dev/null 2>&1; then
    say "  user $user exists"
elif [ "$create_user" = 1 ]; then
    if getent group "$group" >/dev/null 2>&1 || [ "$group" != "$user" ]; then
        run useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --gid "$group" "$user"
    else
        run useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --user-group "$user"
    fi
elif [ "$dry_run" = 1 ]; then
    warn "user $user does not exist: pass --create-user, or create it first"
else
    die "user $user does not exist: pass --create-user, or create it first"
fi
for d in "${rw_dirs[@]}" "$cache_dir"; do
    if [ -d "$d" ] && [ "$(stat -c %U:%G "$d")" = "$user:$group" ]; then
        say "  $d exists, owned by $user:$group"
    else
        run install -d -m 0750 -o "$user" -g "$group" "$d"
    fi
    if [ -d "$d" ] && id -u "$user" >/dev/null 2>&1; then
        foreign="$(find "$d" -mindepth 1 -maxdepth 1 ! -user "$user" -printf '%f ' 2>/dev/null | head -c 300)"
        [ -z "$foreign" ] || warn "in $d, not owned by $user (the service cannot write them): $foreign"
    fi
done

# -- 4. the environment file (never a secret written here) -------------------------------------------------
say "4. environment file $env_file"
if [ -e "$env_file" ]; then
    mode="$(stat -c %a "$env_file")"
    ownership="$(stat -c %U:%G "$env_file")"
    if [ "$mode" = 600 ] && [ "$ownership" = root:root ]; then
        say "  exists, 0600 root:root (left as it is)"
    else
        warn "$env_file is $mode $ownership: made 0600 root:root (it holds API keys)"
        run chown root:root "$env_file"
        run chmod 0600 "$env_file"
    fi
else
    run install -d -m 0755 "$(dirname "$env_file")"
    run install -m 0600 -o root -g root "$example" "$env_file"
    say "  (a copy of ringtrader.env.example: no keys; add them there for paper/live modes)"
fi

# -- 5. the unit --------------------------------------------------------------------------------------------
say "5. unit $unit_dir/$unit_name"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
printf '%s\n' "$unit" > "$tmp/$unit_name"
if command -v systemd-analyze >/dev/null 2>&1; then
    say "  + systemd-analyze verify $tmp/$unit_name"
    if ! out="$(systemd-analyze verify "$tmp/$unit_name" 2>&1)" || [ -n "$out" ]; then
        printf '%s\n' "$out" >&2
        die "systemd-analyze verify found problems in the filled-in unit (above); nothing installed"
    fi
elif [ "$dry_run" = 1 ]; then
    warn "systemd-analyze not found: the unit would not be verified (apt-get install systemd)"
else
    die "systemd-analyze not found (apt-get install systemd): the unit is verified before it is installed"
fi
if [ -f "$unit_dir/$unit_name" ] && cmp -s "$tmp/$unit_name" "$unit_dir/$unit_name"; then
    say "  unchanged"
    unit_changed=0
else
    run install -D -m 0644 "$tmp/$unit_name" "$unit_dir/$unit_name"
    unit_changed=1
fi

# -- 6. numba kernels, compiled as the service will load them ----------------------------------------------
say "6. numba kernels in $cache_dir"
if [ "$warm" = 1 ]; then
    if [ "$dry_run" = 0 ] && ! runuser -u "$user" -- test -r "$config" -a -x "$py"; then
        die "user $user cannot read $config or run $py: the project must be readable by it (e.g. under /opt)"
    fi
    run --show "runuser -u $user -- $py -m core.numba_cache --warm $config  (in $project, RINGTRADER_NUMBA_CACHE_BASE=$cache_dir)" \
        runuser -u "$user" -- env RINGTRADER_NUMBA_CACHE_BASE="$cache_dir" \
        bash -c 'cd "$1" && exec "$2" -m core.numba_cache --warm "$3"' _ "$project" "$py" "$config"
else
    say "  skipped (--no-warm): the first start compiles them (minutes; the supervisor extends its start timeout)"
fi

# -- 7. systemd --------------------------------------------------------------------------------------------
if [ -d /run/systemd/system ]; then
    [ "$unit_changed" = 0 ] || run systemctl daemon-reload
else
    say "7. systemd is not running here: no daemon-reload"
fi

cat >&3 <<EOF

$(if [ "$dry_run" = 1 ]; then echo "Dry run: nothing was changed. "; fi)Next steps:
  - keys (paper/live): edit $env_file as root (variables named by the config's execution.api_key_env /
    api_secret_env); it stays 0600 root:root and is read by systemd, never by this script
  - start at boot and now:   systemctl enable --now ringtrader
  - state and last STATUS:   systemctl status ringtrader
  - the JSON log stream:     journalctl -u ringtrader -f
  - the kill switch:         sudo -u $user $project/scripts/ctl.sh halt --socket $socket_path
  - the sandbox, scored:     systemd-analyze security ringtrader
  - dedicated placement:     isolate the placement's cores first (README, "Deploying with systemd")
EOF
