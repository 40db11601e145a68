"""Sim mode: the supervisor gives the simulator's HMAC account a random key pair when its variables are unset."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import parse_config
from core.errors import ConfigError
from processes.supervisor.cli import _sim_keys

ROOT = Path(__file__).resolve().parents[2]
BASE = json.loads((ROOT / "config" / "system.json").read_text())


def cfg(**over):
    d = copy.deepcopy(BASE)
    d.update(over)
    return parse_config(d, host_cpus=None)


def test_both_unset_gives_a_fresh_random_pair_each_run():
    env: dict = {}
    made = _sim_keys(cfg(), env)
    assert made == ["BINANCE_SIM_API_KEY", "BINANCE_SIM_API_SECRET"]
    assert len(env["BINANCE_SIM_API_KEY"]) == 64 and env["BINANCE_SIM_API_KEY"] != env["BINANCE_SIM_API_SECRET"]
    env2: dict = {}
    _sim_keys(cfg(), env2)
    assert env2["BINANCE_SIM_API_KEY"] != env["BINANCE_SIM_API_KEY"]


def test_a_pair_that_is_set_is_kept_and_half_a_pair_is_an_error():
    env = {"BINANCE_SIM_API_KEY": "k" * 64, "BINANCE_SIM_API_SECRET": "s" * 64}
    assert _sim_keys(cfg(), env) == [] and env["BINANCE_SIM_API_KEY"] == "k" * 64
    with pytest.raises(ConfigError, match="BINANCE_SIM_API_SECRET"):
        _sim_keys(cfg(), {"BINANCE_SIM_API_KEY": "k" * 64})


def test_nothing_is_generated_outside_sim_mode():
    env: dict = {}
    live = copy.deepcopy(BASE)
    live["placement"]["simulator"]["enabled"] = False
    assert _sim_keys(parse_config(live, host_cpus=None), env) == [] and env == {}


def test_the_secret_never_reaches_the_log(tmp_path):
    """A real short run: the generated pair is used by the simulator, and neither value is in any output."""
    d = copy.deepcopy(BASE)
    d["instance"] = f"keys-{os.getpid()}"
    d["metrics"]["enabled"] = False
    d["market_data"]["source"] = "synthetic"
    d["placement"]["simulator"]["enabled"] = True
    d["simulator"]["port"] = 0
    path = tmp_path / "c.json"
    path.write_text(json.dumps(d))
    code = ("import os, sys, runpy\n"
            "from processes.supervisor import cli\n"
            "orig = cli._sim_keys\n"
            "def spy(c, environ=None):\n"
            "    made = orig(c, environ)\n"
            "    open(sys.argv[1], 'w').write('\\n'.join(os.environ[v] for v in made))\n"
            "    return made\n"
            "cli._sim_keys = spy\n"
            "sys.exit(cli.main(['--config', sys.argv[2], '--duration', '1', '--quiet-summary']))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGTRADER__", "BINANCE_SIM_"))}
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "made"), str(path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    values = (tmp_path / "made").read_text().split()
    assert len(values) == 2
    out = p.stdout + p.stderr
    assert "generated a simulator key pair" in out
    for v in values:
        assert v not in out
