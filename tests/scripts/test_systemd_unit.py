"""scripts/systemd: the unit, filled in by install.sh, passes ``systemd-analyze verify``; its hardening is
there and each option says why it keeps shared memory and real-time scheduling working; install.sh
--dry-run changes nothing.

``systemd-analyze`` is required (CI installs Debian's ``systemd``): without it these tests fail, they do
not skip, so an unverified unit never passes unnoticed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "systemd" / "install.sh"
TEMPLATE = ROOT / "scripts" / "systemd" / "ringtrader.service"
VENV_PYTHON = Path(os.environ.get("RINGTRADER_VENV", ROOT / ".venv")) / "bin" / "python"


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze not found: install Debian's 'systemd' package (apt-get install systemd); "
                    "the unit in scripts/systemd/ is verified with it")
    return path


def install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(INSTALL), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def filled_unit(tmp_path: Path, *args: str) -> Path:
    """The unit as install.sh writes it for this checkout (its venv's python in ExecStart, so it exists)."""
    r = install("--print-unit", "--user", "ringtrader", "--env-file", str(tmp_path / "ringtrader.env"), *args)
    assert r.returncode == 0, r.stderr
    path = tmp_path / "ringtrader.service"  # verify takes the unit's name from the file's
    path.write_text(r.stdout)
    return path


def cpu_set(name: str) -> set[int]:
    try:
        text = Path(f"/sys/devices/system/cpu/{name}").read_text().strip()
    except OSError:
        return set()
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def options(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z][A-Za-z]+=", line))


def comment_above(lines: list[str], option: str) -> str:
    """The comment block above ``option``'s line (over the other options of a group that shares one)."""
    i = next(n for n, line in enumerate(lines) if line.startswith(option + "="))
    while i > 0 and re.match(r"^[A-Z][A-Za-z]+=", lines[i - 1]):
        i -= 1
    block = []
    while i > 0 and lines[i - 1].startswith("#"):
        i -= 1
        block.insert(0, lines[i].lstrip("# "))
    return " ".join(block)


def test_the_filled_in_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = systemd_analyze()
    unit = filled_unit(tmp_path)
    text = unit.read_text()
    assert not re.search(r"@[A-Z_]+@", text), "a template field was left unfilled"
    opts = options(text)
    assert opts["ExecStart"] == f"{VENV_PYTHON} -m processes.supervisor --config {ROOT / 'config' / 'system.json'}"
    assert opts["WorkingDirectory"] == str(ROOT) and opts["User"] == "ringtrader"
    assert opts["ReadWritePaths"].split() == [f"-{ROOT / 'var' / 'journal'}"]  # execution.journal_dir
    # system.json spins on no core: the housekeeping CPUs are the online ones the kernel does not isolate
    online, isolated = cpu_set("online"), cpu_set("isolated")
    assert [int(c) for c in opts["CPUAffinity"].split()] == sorted(online - isolated or online)
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_verify_would_catch_a_broken_unit(tmp_path):
    """The check above means something: a unit whose ExecStart binary is missing fails verify."""
    analyze = systemd_analyze()
    unit = filled_unit(tmp_path)
    unit.write_text(unit.read_text().replace(str(VENV_PYTHON), str(tmp_path / "no-such-python")))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "no-such-python" in r.stdout + r.stderr


def test_the_service_type_watchdog_limits_and_capabilities():
    opts = options(TEMPLATE.read_text())
    assert opts["Type"] == "notify" and opts["NotifyAccess"] == "main"
    assert opts["WatchdogSec"] == "10s"
    assert opts["Restart"] == "on-failure" and opts["RestartPreventExitStatus"] == "2"
    assert opts["LimitMEMLOCK"] == "infinity"
    assert opts["AmbientCapabilities"].split() == ["CAP_SYS_NICE", "CAP_IPC_LOCK"]
    assert opts["CapabilityBoundingSet"].split() == ["CAP_SYS_NICE", "CAP_IPC_LOCK"]
    assert opts["EnvironmentFile"] == "@ENV_FILE@" and opts["CPUAffinity"] == "@CPUS@"
    assert opts["KillMode"] == "mixed"  # SIGTERM to the supervisor only: it stops the workers in order
    assert opts["ExecStart"].startswith("@VENV@/bin/python -m processes.supervisor --config ")


def test_each_hardening_option_says_why_shared_memory_and_realtime_still_work():
    lines = TEMPLATE.read_text().splitlines()
    opts = options("\n".join(lines))
    expected = {  # option: (value, words its comment must use)
        "NoNewPrivileges": ("yes", ["ambient", "SCHED_FIFO", "mlockall"]),
        "ProtectSystem": ("strict", ["/dev/shm", "0600", "journal", "recordings"]),
        "ReadWritePaths": ("@RW_PATHS@", ["journal"]),
        "ProtectHome": ("@PROTECT_HOME@", ["/dev/shm", "scheduling"]),
        "PrivateTmp": ("yes", ["/dev/shm", "control socket"]),
        "PrivateDevices": ("yes", ["/dev/shm", "bind-mounts"]),
        "ProtectKernelTunables": ("yes", ["sched_setscheduler", "mlockall"]),
        "ProtectControlGroups": ("yes", ["sched_setscheduler"]),
        "RestrictRealtime": ("no", ["SCHED_FIFO"]),
        "SystemCallFilter": ("@system-service", ["sched_setscheduler", "mlockall", "@resources"]),
        "RemoveIPC": ("yes", ["/dev/shm", "segments"]),
        "UMask": ("0077", ["segments"]),
        "MemoryDenyWriteExecute": ("no", ["INCOMPATIBLE", "numba"]),
        "PrivateUsers": ("no", ["CAP_SYS_NICE", "SCHED_FIFO"]),
        "AmbientCapabilities": ("CAP_SYS_NICE CAP_IPC_LOCK", ["SCHED_FIFO", "mlockall"]),
        "LimitMEMLOCK": ("infinity", ["mlockall"]),
        "KillMode": ("mixed", ["orderly", "SIGTERM"]),
    }
    for option, (value, words) in expected.items():
        assert opts.get(option) == value, f"{option}={opts.get(option)!r}, expected {value!r}"
        why = comment_above(lines, option)
        missing = [w for w in words if w not in why]
        assert not missing, f"the comment above {option} does not mention {missing}: {why!r}"


def test_install_dry_run_prints_every_step_and_changes_nothing(tmp_path):
    systemd_analyze()
    env_file, unit_dir = tmp_path / "etc" / "ringtrader.env", tmp_path / "units"
    r = install("--dry-run", "--user", "ringtrader", "--env-file", str(env_file), "--unit-dir", str(unit_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for step in ("1. venv", "2. config", "3. user", "4. environment file", "5. unit", "6. numba kernels",
                 "Dry run: nothing was changed", "systemctl enable --now ringtrader"):
        assert step in out, f"{step!r} missing from:\n{out}"
    assert f"would run: install -m 0600 -o root -g root {INSTALL.parent / 'ringtrader.env.example'} {env_file}" in out
    assert "systemd-analyze verify" in out
    assert list(tmp_path.iterdir()) == []  # no env file, no unit, no directory


def test_the_env_example_holds_no_secret():
    text = (INSTALL.parent / "ringtrader.env.example").read_text()
    assigned = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert assigned == []  # every variable is a commented-out placeholder
    assert "#BINANCE_API_KEY=" in text and "#BINANCE_API_SECRET=" in text
