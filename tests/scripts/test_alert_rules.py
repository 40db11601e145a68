"""The alerting rules (config/prometheus/alerts.yml): ``promtool check rules`` and ``promtool test rules``.

promtool comes with Debian's ``prometheus`` package (.ci/run installs it). Every rule uses only families
the metrics endpoint exports (processes/metrics.py documents them).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is needed: apt-get install prometheus (.ci/run installs it)"
    return path


def test_the_rules_are_valid():
    r = subprocess.run([promtool(), "check", "rules", "alerts.yml"], cwd=RULES, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 10 rules found" in r.stdout


def test_every_alert_fires_on_its_condition_and_not_before():
    r = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=RULES, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_rules_use_only_families_the_endpoint_exports():
    doc = (ROOT / "processes" / "metrics.py").read_text()
    exported = set(re.findall(r"``(ringtrader_[a-z_]+)``", doc))
    used = set(re.findall(r"\b(ringtrader_[a-z_]+)", (RULES / "alerts.yml").read_text()))
    base = {re.sub(r"_(bucket|sum|count)$", "", u) for u in used}
    assert base <= exported, sorted(base - exported)
    tested = set(re.findall(r"alertname: (\w+)", (RULES / "alerts_test.yml").read_text()))
    defined = set(re.findall(r"alert: (\w+)", (RULES / "alerts.yml").read_text()))
    assert defined == tested, sorted(defined ^ tested)  # every alert has a unit test
