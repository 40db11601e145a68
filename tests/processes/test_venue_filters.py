"""At start the supervisor takes the instrument filters from the venue's exchangeInfo (core.filters)."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core import filters as flt
from core.config import parse_config
from processes.risk import filter_table
from processes.supervisor.supervisor import EXIT_CONFIG, EXIT_OK, Supervisor

ROOT = Path(__file__).resolve().parents[2]
BASE = json.loads((ROOT / "config" / "system.json").read_text())


def symbol(name, status="TRADING", tick="0.01000000", step="0.00001000", min_notional="5.00000000"):
    return {"symbol": name, "status": status, "baseAsset": name[:-4], "quoteAsset": "USDT",
            "baseAssetPrecision": 8, "quoteAssetPrecision": 8, "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
            "filters": [{"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
                         "tickSize": tick},
                        {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000.00000000", "stepSize": step},
                        {"filterType": "NOTIONAL", "minNotional": min_notional, "applyMinToMarket": True,
                         "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5}]}


class Venue:
    """A one-route HTTP server answering /api/v3/exchangeInfo with a given body."""

    def __init__(self, body: dict, status: int = 200):
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.paths.append(self.path)
                data = json.dumps(outer.body).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.body, self.status, self.paths = body, status, []
        self.srv = HTTPServer(("127.0.0.1", 0), H)
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def resolve(body: dict, status: int = 200):
    v = Venue(body, status)
    try:
        d = copy.deepcopy(BASE)
        d["market_data"]["rest_url"] = v.url
        d["instruments"][0]["filters"] = "exchangeInfo"  # BTCUSDT from the venue; ETHUSDT from the file
        for k in ("tick_size", "lot_size", "min_notional"):
            d["instruments"][0].pop(k, None)
        fake = SimpleNamespace(cfg=parse_config(d, host_cpus=None), exit_code=EXIT_OK)
        ok = Supervisor._resolve_venue(fake, attempts=1)
        return ok, fake, v.paths
    finally:
        v.close()


def test_the_venue_filters_reach_the_config_and_the_risk_table():
    body = {"timezone": "UTC", "serverTime": 1, "rateLimits": [
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100}],
        "symbols": [symbol("BTCUSDT", tick="0.10000000", step="0.00010000", min_notional="10.00000000"),
                    symbol("ETHUSDT")]}
    ok, fake, paths = resolve(body)
    assert ok and "symbols=" in paths[0]
    btc = fake.cfg.instruments[0]
    assert (btc.tick_size, btc.lot_size, btc.min_notional) == (10**7, 10**4, 10 * 10**8)
    info = flt.VenueInfo.from_json(fake.cfg.venue)
    assert info.orders_per_10s == 100
    t = filter_table(fake.cfg)
    assert t[0, flt.C_TICK] == 10**7 and t[0, flt.C_STEP] == 10**4 and t[1, flt.C_TICK] == 10**6
    assert flt.round_qty_down(t, 0, np.int64(123_456), False) == 120_000


@pytest.mark.parametrize("symbols, words", [
    ([symbol("ETHUSDT")], "BTCUSDT"),  # not listed
    ([symbol("BTCUSDT", status="BREAK"), symbol("ETHUSDT")], "BREAK"),
    ([symbol("BTCUSDT"), symbol("ETHUSDT", tick="0.10000000")], "tick"),  # the file's 0.01 is finer than the venue
])
def test_an_unlisted_or_halted_symbol_or_a_contradiction_stops_the_start_with_exit_2(symbols, words, caplog):
    ok, fake, _ = resolve({"timezone": "UTC", "serverTime": 1, "rateLimits": [], "symbols": symbols})
    assert not ok and fake.exit_code == EXIT_CONFIG
    assert any(words in r.getMessage() for r in caplog.records)


def test_an_unreachable_venue_fails_the_start_without_a_config_verdict():
    d = copy.deepcopy(BASE)
    d["market_data"]["rest_url"] = "http://127.0.0.1:9"  # discard port: refused
    fake = SimpleNamespace(cfg=parse_config(d, host_cpus=None), exit_code=EXIT_OK)
    assert not Supervisor._resolve_venue(fake, attempts=1) and fake.exit_code == EXIT_OK
