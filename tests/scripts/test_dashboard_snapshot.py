"""scripts/dashboard_snapshot.py without a run: its query expansion, legends and drawing of every panel type."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import dashboard_snapshot as ds  # noqa: E402


def test_queries_are_expanded_as_grafana_would_and_legends_follow_the_format():
    assert ds.expand('rate(x{hop="$hop"}[$__rate_interval])', "md->book") == 'rate(x{hop="md->book"}[10s])'
    assert ds.legend("{{ring}} -> {{consumer}}", {"ring": "md", "consumer": "book"}) == "md -> book"
    assert ds.legend(None, {"__name__": "x", "symbol": "BTCUSDT"}) == "symbol=BTCUSDT"


def test_every_panel_of_the_shipped_dashboard_is_drawn_and_empty_ones_say_so(tmp_path):
    dash = json.loads(ds.DASHBOARD.read_text())
    panels = []
    for i, p in enumerate(dash["panels"]):
        if p["type"] == "heatmap":
            series = [(le, [0.0, 1.0, 2.0], [float(k), float(k + 1), float(k + 2)]) for k, le in
                      enumerate(["1e-06", "2e-06", "+Inf"])]
        else:
            series = [] if i == 1 else [("a", [0.0, 1.0, 2.0], [1.0, 2.0, 3.0])]
        panels.append({"type": p["type"], "title": p["title"], "grid": p["gridPos"], "series": series})
    out = tmp_path / "d.png"
    ds.draw(panels, str(out), "test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
