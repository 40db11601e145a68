"""core.filters: exchangeInfo parsing on real recorded bodies and our simulator's, config merge, the filter table
and its kernels against a Decimal reference written from Binance's filters.md, and against the simulator's own
filter checks."""

from __future__ import annotations

import asyncio
import copy
import decimal
import json
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import numba as nb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import filters as F
from core.config import Instrument, load_config
from core.errors import ConfigError
from core.filters import (
    FILTER_NAMES, N_COLS, VenueInfo, VenueInfoError, build_filter_table, check_open_orders, check_order,
    cmp_product, instruments_with_filters, merge_with_config, parse_exchange_info, reason_text, round_price,
    round_qty_down,
)  # fmt: skip
from core.fixedpoint import to_decimal, to_fixed
from core.records import INT64_MAX, OT_LIMIT, OT_LIMIT_MAKER, OT_MARKET, SIDE_BUY, SIDE_SELL
from core.recordings import KIND_EXCHANGE_INFO, iter_frames

PROJECT_ROOT = Path(__file__).resolve().parents[2]
X = to_fixed
OT_NAMES = {OT_LIMIT: "LIMIT", OT_MARKET: "MARKET", OT_LIMIT_MAKER: "LIMIT_MAKER"}

# exchangeInfo bodies recorded from Binance (and Binance.US) in ../shared/data (SOURCES.md)
CRYPTOFEED_INFO = [
    "cryptofeed/2021-04-17_be4e5c8/BINANCE.0", "cryptofeed/2021-04-17_be4e5c8/BINANCE_US.0",
    "cryptofeed/2021-08-14_cb63e8d/BINANCE.0", "cryptofeed/2021-08-14_cb63e8d/BINANCE_US.0",
    "cryptofeed/2021-10-12_ce58c2a/BINANCE.0", "cryptofeed/2021-10-12_ce58c2a/BINANCE_US.0",
]  # fmt: skip
NAUTILUS_INFO = "nautilus_trader/http_responses/http_spot_market_exchange_info.json"
_BODIES: dict[str, bytes] = {}


def body_of(shared: Path, rel: str) -> bytes:
    """The exchangeInfo response body of a recorded file, exactly as Binance sent it."""
    if rel not in _BODIES:
        path = shared / rel
        if rel.endswith(".json"):
            _BODIES[rel] = path.read_bytes()
        else:
            frames = [f for f in iter_frames(path) if f.kind == KIND_EXCHANGE_INFO]
            assert len(frames) == 1, f"{rel}: expected one exchangeInfo response, found {len(frames)}"
            _BODIES[rel] = frames[0].payload
    return _BODIES[rel]


def symbols_by_status(body: bytes) -> tuple[list[str], list[tuple[str, str]]]:
    doc = json.loads(body)
    trading = [s["symbol"] for s in doc["symbols"] if s["status"] == "TRADING"]
    other = [(s["symbol"], s["status"]) for s in doc["symbols"] if s["status"] != "TRADING"]
    return trading, other


def raw_symbol(body: bytes, name: str) -> dict:
    return next(s for s in json.loads(body)["symbols"] if s["symbol"] == name)


# Crafted bodies (marked as such): today's filter set (NOTIONAL, PERCENT_PRICE_BY_SIDE), which the 2021
# recordings predate. Shapes follow filters.md's /exchangeInfo format blocks.
def crafted_symbol(name="NEWUSDT", *, notional=None, pps=None, min_notional=None, extra=(), order_types=None):
    filters = [
        {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
         "tickSize": "0.01000000"},
        {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
        {"filterType": "ICEBERG_PARTS", "limit": 100},
        {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "95.50000000", "stepSize": "0.00000000"},
        {"filterType": "TRAILING_DELTA", "minTrailingAboveDelta": 10, "maxTrailingAboveDelta": 2000,
         "minTrailingBelowDelta": 10, "maxTrailingBelowDelta": 2000},
        {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
    ]  # fmt: skip
    if notional is not False:
        filters.append(notional or {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
                                    "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5})
    if pps is not False:
        filters.append(pps or {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "1.2",
                               "bidMultiplierDown": "0.2", "askMultiplierUp": "5", "askMultiplierDown": "0.8",
                               "avgPriceMins": 1})  # fmt: skip
    if min_notional:
        filters.append(min_notional)
    filters.extend(extra)
    return {
        "symbol": name, "status": "TRADING", "baseAsset": name[:-4], "baseAssetPrecision": 8, "quoteAsset": "USDT",
        "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
        "orderTypes": order_types or ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT"],
        "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True, "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True, "cancelReplaceAllowed": True, "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False, "filters": filters, "permissions": [], "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER", "allowedSelfTradePreventionModes": ["EXPIRE_MAKER"],
    }  # fmt: skip


def crafted_body(*symbols) -> dict:
    return {
        "timezone": "UTC", "serverTime": 1_765_000_000_000,
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 300000},
        ],
        "exchangeFilters": [{"filterType": "EXCHANGE_MAX_NUM_ORDERS", "maxNumOrders": 1000}],
        "symbols": list(symbols),
    }  # fmt: skip


def simulator_body(specs, sim_cfg=None) -> bytes:
    """The body our simulator serves, from its own handler (``Simulator._exchange_info``) on a stand-in object:
    no server, accounts or market generator is started."""
    from processes.simulator.config import SimulatorConfig
    from processes.simulator.server import Simulator

    cfg = sim_cfg or SimulatorConfig()
    sim = SimpleNamespace(cfg=cfg, specs=list(specs), source=None, server_ms=lambda: 1_765_000_000_000)
    sim._symbol_info = lambda spec: Simulator._symbol_info(sim, spec)
    resp = asyncio.run(Simulator._exchange_info(sim, SimpleNamespace(query={})))
    assert resp.status == 200
    return resp.body


def inst(i, symbol, tick=None, lot=None, min_notional="0", *, venue=False) -> Instrument:
    if venue:
        return Instrument(id=i, symbol=symbol, tick_size=0, lot_size=0, min_notional=0, from_exchange_info=True)
    return Instrument(id=i, symbol=symbol, tick_size=X(tick), lot_size=X(lot), min_notional=X(min_notional),
                      from_exchange_info=False)  # fmt: skip


# ---------------------------------------------------------------------------
# Decimal reference: Binance's filters.md, read from the raw filter objects
# ---------------------------------------------------------------------------
_CTX = decimal.Context(prec=80)


def reference_check(sym: dict, side: int, otype: int, price: int, qty: int, ref: int) -> str | None:
    """The first failing check's name (REASON_NAMES spelling), None when every filter passes."""
    with decimal.localcontext(_CTX):
        f = {x["filterType"]: x for x in sym["filters"]}
        p, q, r = to_decimal(price), to_decimal(qty), to_decimal(ref)
        if OT_NAMES[otype] not in sym["orderTypes"]:
            return "ORDER_TYPE_NOT_ALLOWED"
        market = otype == OT_MARKET
        if not market:
            if "PRICE_FILTER" in f:
                lo, hi, tick = (Decimal(f["PRICE_FILTER"][k]) for k in ("minPrice", "maxPrice", "tickSize"))
                if (lo and p < lo) or (hi and p > hi) or (tick and p % tick):
                    return "PRICE_FILTER"
            if r > 0:
                bands = []
                if "PERCENT_PRICE" in f:
                    g = f["PERCENT_PRICE"]
                    bands.append(("PERCENT_PRICE", g["multiplierUp"], g["multiplierDown"]))
                if "PERCENT_PRICE_BY_SIDE" in f:
                    pre = "bid" if side == SIDE_BUY else "ask"
                    g = f["PERCENT_PRICE_BY_SIDE"]
                    bands.append(("PERCENT_PRICE_BY_SIDE", g[f"{pre}MultiplierUp"], g[f"{pre}MultiplierDown"]))
                for name, up, down in bands:
                    up, down = Decimal(up), Decimal(down)
                    if (up and p > r * up) or (down and p < r * down):
                        return name
        for name in ("LOT_SIZE",) + (("MARKET_LOT_SIZE",) if market else ()):
            if name in f:
                lo, hi, step = (Decimal(f[name][k]) for k in ("minQty", "maxQty", "stepSize"))
                if (lo and q < lo) or (hi and q > hi) or (step and q % step):
                    return name
        npx = r if market else p
        if npx > 0:
            n = npx * q
            g = f.get("MIN_NOTIONAL")
            if g and (not market or g["applyToMarket"]) and n < Decimal(g["minNotional"]):
                return "MIN_NOTIONAL"
            g = f.get("NOTIONAL")
            if g:
                lo, hi = Decimal(g["minNotional"]), Decimal(g["maxNotional"])
                if (not market or g["applyMinToMarket"]) and n < lo:
                    return "NOTIONAL"
                if (not market or g["applyMaxToMarket"]) and hi and n > hi:
                    return "MAX_NOTIONAL"
        return None


def kernel_check(table, row, side, otype, price, qty, ref) -> str | None:
    code = check_order(table, row, side, otype, price, qty, ref)
    return None if code == F.F_OK else F.REASON_NAMES[int(code)]


# ---------------------------------------------------------------------------
# Parsing real bodies
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("rel", CRYPTOFEED_INFO + [NAUTILUS_INFO])
def test_every_trading_symbol_of_every_recorded_body_parses_into_a_consistent_table(shared_data, rel):
    body = body_of(shared_data, rel)
    trading, _ = symbols_by_status(body)
    info = parse_exchange_info(body, trading)
    assert list(info.symbols) == trading
    table = info.filter_table()
    assert table.shape == (len(trading), N_COLS) and table.dtype == np.int64
    raws = {s["symbol"]: s for s in json.loads(body)["symbols"]}
    for row, name in enumerate(trading):
        s = info.symbols[name]
        raw = raws[name]
        pf = next(f for f in raw["filters"] if f["filterType"] == "PRICE_FILTER")
        assert table[row, F.C_TICK] == X(pf["tickSize"]) > 0
        assert s.step_size > 0 and table[row, F.C_STEP] == s.step_size
        assert table[row, F.C_MKT_ROUND_STEP] % s.step_size == 0
        assert s.unknown_filter_types == ()  # every filter type Binance sent in 2021 is known
        assert s.base_asset + s.quote_asset == name or rel.endswith("BINANCE_US.0")
        kept = set(s.filter_types) | {f["filterType"] for f in s.other_filters}
        assert {f["filterType"] for f in raw["filters"]} == kept


@pytest.mark.parametrize("rel", CRYPTOFEED_INFO)
def test_every_non_trading_symbol_of_a_recorded_body_is_an_error_naming_it_and_its_status(shared_data, rel):
    body = body_of(shared_data, rel)
    trading, other = symbols_by_status(body)
    assert other, "the 2021 bodies list BREAK symbols"
    for name, status in other[:20]:
        with pytest.raises(VenueInfoError) as ei:
            parse_exchange_info(body, [trading[0], name])
        assert name in str(ei.value) and status in str(ei.value) and ei.value.symbol == name
        assert isinstance(ei.value, ConfigError)


def test_nautilus_btcusdt_and_ethusdt_values_match_the_file(shared_data):
    # values read by eye from http_spot_market_exchange_info.json (BTCUSDT, 2021-10-22)
    info = parse_exchange_info(body_of(shared_data, NAUTILUS_INFO), ["BTCUSDT", "ETHUSDT"])
    b = info.symbols["BTCUSDT"]
    assert (b.base_asset, b.quote_asset, b.base_asset_precision, b.quote_asset_precision) == ("BTC", "USDT", 8, 8)
    assert (b.min_price, b.max_price, b.tick_size) == (X("0.01"), X("1000000"), X("0.01"))
    assert (b.min_qty, b.max_qty, b.step_size) == (X("0.00001"), X("9000"), X("0.00001"))
    assert (b.market_min_qty, b.market_max_qty, b.market_step_size) == (0, X("112.21108820"), 0)
    assert (b.min_notional, b.min_notional_apply_to_market, b.min_notional_avg_price_mins) == (X("10"), True, 5)
    assert (b.multiplier_up, b.multiplier_down, b.percent_price_avg_price_mins) == (X("5"), X("0.2"), 5)
    assert b.max_num_orders == 200 and b.quote_order_qty_market_allowed
    assert b.order_types == ("LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT")
    assert [f["filterType"] for f in b.other_filters] == ["ICEBERG_PARTS", "MAX_NUM_ALGO_ORDERS"]
    assert not b.has("NOTIONAL") and b.effective_min_notional == X("10")
    e = info.symbols["ETHUSDT"]
    assert (e.min_qty, e.step_size, e.tick_size) == (X("0.0001"), X("0.0001"), X("0.01"))
    assert (info.weight_per_minute, info.orders_per_10s, info.orders_per_day, info.raw_requests_per_5min) == (
        1200, 50, 160000, 6100)
    assert info.orders_per_second is None and info.server_time_ms == 1634942465856


def test_cryptofeed_2021_10_12_values_match_the_file(shared_data):
    body = body_of(shared_data, "cryptofeed/2021-10-12_ce58c2a/BINANCE.0")
    info = parse_exchange_info(body, ["BTCUSDT", "SHIBUSDT", "BLZETH", "BTCUPUSDT", "RUNEEUR"])
    assert info.symbols["BTCUSDT"].market_max_qty == X("100.05381873")
    shib = info.symbols["SHIBUSDT"]
    assert (shib.min_qty, shib.max_qty, shib.step_size) == (X("1"), X("46116860414"), X("1"))
    assert shib.base_asset_precision == 2
    assert (shib.tick_size, shib.max_price) == (1, X("1"))
    assert info.symbols["BLZETH"].min_notional == X("0.005") and info.symbols["BLZETH"].quote_asset == "ETH"
    up = info.symbols["BTCUPUSDT"]  # a leveraged token: TRADING, isSpotTradingAllowed false, MAX_POSITION listed
    assert up.max_position == X("43") and up.min_price == X("11.646") and not up.is_spot_trading_allowed
    assert info.symbols["RUNEEUR"].max_qty == X("9222449")
    assert (info.orders_per_10s, info.orders_per_day, info.weight_per_minute) == (50, 160000, 1200)
    old = parse_exchange_info(body_of(shared_data, "cryptofeed/2021-04-17_be4e5c8/BINANCE.0"), ["BTCUSDT"])
    assert (old.orders_per_10s, old.orders_per_day, old.raw_requests_per_5min) == (100, 200000, None)


def test_binance_us_body_with_four_decimal_strings_parses_exactly(shared_data):
    info = parse_exchange_info(body_of(shared_data, "cryptofeed/2021-04-17_be4e5c8/BINANCE_US.0"), ["BTCUSD"])
    s = info.symbols["BTCUSD"]
    assert (s.tick_size, s.min_price, s.max_price) == (X("0.01"), X("0.01"), X("100000"))
    assert (s.step_size, s.min_notional, s.quote_asset_precision) == (X("0.000001"), X("10"), 4)


# ---------------------------------------------------------------------------
# Our simulator's exchangeInfo
# ---------------------------------------------------------------------------
def test_simulator_exchange_info_parses_with_the_specs_and_limits_it_enforces():
    from processes.simulator.config import SimulatorConfig, SymbolSpec

    cfg = SimulatorConfig(orders_per_10s=77, orders_per_day=1234, weight_limit_per_minute=999, max_open_orders=13)
    specs = [SymbolSpec(symbol="BTCUSDT", tick_size="0.01", step_size="0.00001", start_price="60000.00",
                        min_notional="5"),
             SymbolSpec(symbol="DOGEUSDT", tick_size="0.00001", step_size="1", start_price="0.10000", min_notional="1")]
    info = parse_exchange_info(simulator_body(specs, cfg), ["BTCUSDT", "DOGEUSDT"])
    for spec in specs:
        s = info.symbols[spec.symbol]
        assert (s.tick_size, s.step_size, s.min_qty) == (X(spec.tick_size), X(spec.step_size), X(spec.step_size))
        assert s.effective_min_notional == X(spec.min_notional) and s.notional_apply_min_to_market
        assert s.max_num_orders == 13 and s.unknown_filter_types == () and s.quote_order_qty_market_allowed
        assert set(s.order_types) == {"LIMIT", "LIMIT_MAKER", "MARKET"}
    assert (info.orders_per_10s, info.orders_per_day, info.weight_per_minute) == (77, 1234, 999)
    assert info.symbols["DOGEUSDT"].base_asset == "DOGE"


def test_shipped_config_merges_with_what_our_simulator_serves_for_it():
    from processes.simulator.config import SimulatorConfig, resolve_symbols

    cfg = load_config(PROJECT_ROOT / "config" / "system.json", env={}, host_cpus=None)
    sim_cfg = SimulatorConfig.from_dict(cfg.simulator)
    body = simulator_body(resolve_symbols(cfg.instruments, sim_cfg), sim_cfg)
    merged = merge_with_config(cfg.instruments, parse_exchange_info(body, [i.symbol for i in cfg.instruments]))
    table = merged.filter_table()
    for i in cfg.instruments:
        assert table[i.id, F.C_TICK] == i.tick_size and table[i.id, F.C_STEP] == i.lot_size
    assert VenueInfo.from_json(merged.to_json()) == merged


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_check_order_names_the_same_failure_as_the_simulators_own_filters(data):
    """The simulator enforces what it lists (processes/simulator/orders.py ``OrderService._filters``); a MARKET
    order's reference there is the book mid, passed here as ref_px."""
    from processes.simulator.auth import BinanceError
    from processes.simulator.config import SymbolSpec
    from processes.simulator.orders import OrderService

    spec = SymbolSpec(symbol="BTCUSDT", tick_size="0.01", step_size="0.00001", start_price="60000.00", min_notional="5")
    table = _sim_table(spec)
    bid = data.draw(st.integers(X("1000"), X("100000")), "bid") // X("0.01") * X("0.01")
    ask = bid + X("0.01") * data.draw(st.integers(1, 50), "spread")
    ref = (bid + ask) // 2
    otype = data.draw(st.sampled_from([OT_LIMIT, OT_LIMIT_MAKER, OT_MARKET]), "type")
    side = data.draw(st.sampled_from([SIDE_BUY, SIDE_SELL]), "side")
    price = 0 if otype == OT_MARKET else data.draw(st.one_of(
        st.integers(1, X("2000000")), st.integers(1, 10**8).map(lambda k: k * X("0.01"))), "price")
    qty = data.draw(st.one_of(st.integers(1, X("10000")), st.integers(1, 10**9).map(lambda k: k * X("0.00001")),
                              st.integers(X("4"), X("6")).map(lambda n: -(-n * 10**8 // max(price or ref, 1)))), "qty")
    venue = SimpleNamespace(tick=X(spec.tick_size), step=X(spec.step_size), min_notional=X(spec.min_notional),
                            book=SimpleNamespace(best=lambda: (bid, ask)))
    try:
        OrderService._filters(None, venue, otype, side, price, qty, 0)
        sim = None
    except BinanceError as exc:
        assert exc.code == -1013
        sim = exc.msg.removeprefix("Filter failure: ")
    ours = check_order(table, 0, side, otype, price, qty, ref)
    assert (None if ours == F.F_OK else FILTER_NAMES[int(ours)]) == sim


_SIM_TABLES: dict = {}


def _sim_table(spec):
    if spec.symbol not in _SIM_TABLES:
        _SIM_TABLES[spec.symbol] = parse_exchange_info(simulator_body([spec]), [spec.symbol]).filter_table()
    return _SIM_TABLES[spec.symbol]


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
def test_a_symbol_the_body_does_not_list_is_an_error_naming_it(shared_data):
    with pytest.raises(VenueInfoError, match="NOPEUSDT") as ei:
        parse_exchange_info(body_of(shared_data, NAUTILUS_INFO), ["BTCUSDT", "NOPEUSDT"])
    assert ei.value.symbol == "NOPEUSDT"


@pytest.mark.parametrize("body, match", [
    (b"<html>502 Bad Gateway</html>", "not valid JSON"),
    (b"[]", "must be a JSON object"),
    (b'{"code":-1121,"msg":"Invalid symbol."}', "code -1121 'Invalid symbol.'"),
    (b'{"timezone":"UTC","serverTime":1}', "symbols must be an array"),
    (json.dumps(crafted_body("BTCUSDT")).encode(), r"symbols\[0\] must be an object with a string symbol"),
])  # fmt: skip
def test_a_malformed_body_is_a_clear_error(body, match):
    with pytest.raises(VenueInfoError, match=match):
        parse_exchange_info(body, ["BTCUSDT"])


def _broken(mutate):
    sym = crafted_symbol()
    mutate(sym)
    return crafted_body(sym)


@pytest.mark.parametrize("mutate, path", [
    (lambda s: s["filters"][0].pop("tickSize"), "filters.PRICE_FILTER.tickSize is missing"),
    (lambda s: s["filters"][0].update(tickSize="0.000000001"), "PRICE_FILTER.tickSize is not an exact decimal"),
    (lambda s: s["filters"][0].update(tickSize=0.01), "PRICE_FILTER.tickSize must be a decimal string"),
    (lambda s: s["filters"][1].update(stepSize="-1"), "LOT_SIZE.stepSize is not an exact decimal"),
    (lambda s: s["filters"].append(dict(s["filters"][1])), "LOT_SIZE is listed twice"),
    (lambda s: s["filters"][-2].update(applyMinToMarket="yes"), "NOTIONAL.applyMinToMarket must be true or false"),
    (lambda s: s["filters"][-1].update(bidMultiplierUp=None), "PERCENT_PRICE_BY_SIDE.bidMultiplierUp must be"),
    (lambda s: s["filters"].append({"limit": 3}), r"filters\[8\].filterType is missing"),
    (lambda s: s.pop("baseAsset"), "baseAsset is missing"),
    (lambda s: s.update(orderTypes="LIMIT"), "orderTypes must be an array"),
])  # fmt: skip
def test_a_malformed_filter_is_an_error_naming_its_path(mutate, path):
    with pytest.raises(VenueInfoError, match=path) as ei:
        parse_exchange_info(_broken(mutate), ["NEWUSDT"])
    assert str(ei.value).startswith("exchangeInfo.symbols[NEWUSDT].") and ei.value.symbol == "NEWUSDT"


def test_a_malformed_symbol_we_do_not_trade_is_not_looked_at():
    bad = crafted_symbol("BADUSDT")
    bad["filters"] = "garbage"
    info = parse_exchange_info(crafted_body(bad, crafted_symbol()), ["NEWUSDT"])
    assert list(info.symbols) == ["NEWUSDT"]


@pytest.mark.parametrize("status", ["BREAK", "HALT", "END_OF_DAY", "CANCEL_ONLY"])
def test_a_symbol_not_trading_is_an_error_naming_its_status(status):
    sym = crafted_symbol()
    sym["status"] = status
    with pytest.raises(VenueInfoError, match=f"is {status}: NEWUSDT is not TRADING"):
        parse_exchange_info(crafted_body(sym), ["NEWUSDT"])


def test_unknown_filter_types_are_kept_raw_and_listed_not_an_error():
    extra = ({"filterType": "T_PLUS_SELL", "days": 1}, {"filterType": "MAX_NUM_ORDER_AMENDS", "maxNumOrderAmends": 10})
    info = parse_exchange_info(crafted_body(crafted_symbol(extra=extra)), ["NEWUSDT"])
    s = info.symbols["NEWUSDT"]
    assert s.unknown_filter_types == ("T_PLUS_SELL",)
    assert {"filterType": "T_PLUS_SELL", "days": 1} in s.other_filters
    assert [f["filterType"] for f in s.other_filters] == ["ICEBERG_PARTS", "TRAILING_DELTA", "T_PLUS_SELL",
                                                          "MAX_NUM_ORDER_AMENDS"]
    assert info.exchange_max_num_orders == 1000 and info.raw_requests_per_5min == 300000


def test_venue_info_survives_the_json_hand_over_and_rejects_garbage(shared_data):
    body = body_of(shared_data, "cryptofeed/2021-10-12_ce58c2a/BINANCE.0")
    info = parse_exchange_info(body, ["BTCUSDT", "SHIBUSDT", "BTCUPUSDT"])
    back = VenueInfo.from_json(info.to_json())
    assert back == info and list(back.symbols) == list(info.symbols)
    assert np.array_equal(back.filter_table(), info.filter_table())
    crafted = parse_exchange_info(crafted_body(crafted_symbol(extra=({"filterType": "X", "a": [1]},))), ["NEWUSDT"])
    assert VenueInfo.from_json(crafted.to_json().encode()) == crafted
    for garbage in ("{}", "[1]", '{"version": 1}', "nope", json.dumps({**json.loads(info.to_json()), "version": 2})):
        with pytest.raises(VenueInfoError, match="venue_info is not a valid VenueInfo JSON"):
            VenueInfo.from_json(garbage)


# ---------------------------------------------------------------------------
# Config merge
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nautilus_info(shared_data):
    return parse_exchange_info(body_of(shared_data, NAUTILUS_INFO), ["BTCUSDT", "ETHUSDT"])


def test_merge_keeps_coarser_config_values_takes_venue_ones_and_orders_by_instrument_id(nautilus_info):
    cfg = (inst(0, "ETHUSDT", venue=True), inst(1, "BTCUSDT", "0.10", "0.001", "25"))
    merged = merge_with_config(cfg, nautilus_info)
    assert list(merged.symbols) == ["ETHUSDT", "BTCUSDT"]
    assert merged.symbols["ETHUSDT"] == nautilus_info.symbols["ETHUSDT"]
    btc = merged.symbols["BTCUSDT"]
    assert (btc.tick_size, btc.step_size, btc.min_notional) == (X("0.1"), X("0.001"), X("25"))
    assert btc.filters_source == "config"
    assert btc.max_price == X("1000000") and btc.market_max_qty == X("112.21108820")  # other venue filters stay
    table = merged.filter_table()
    assert check_order(table, 1, SIDE_BUY, OT_LIMIT, X("60000.10"), X("0.001"), X("60000")) == F.F_OK
    assert check_order(table, 1, SIDE_BUY, OT_LIMIT, X("60000.01"), X("0.001"), X("60000")) == F.F_PRICE_FILTER
    assert check_order(table, 1, SIDE_BUY, OT_LIMIT, X("60000.10"), X("0.00011"), X("60000")) == F.F_LOT_SIZE
    assert check_order(table, 1, SIDE_BUY, OT_LIMIT, X("20000.00"), X("0.001"), X("20000")) == F.F_MIN_NOTIONAL
    resolved = instruments_with_filters(cfg, merged)
    assert (resolved[0].tick_size, resolved[0].lot_size, resolved[0].min_notional) == (X("0.01"), X("0.0001"), X("10"))
    assert resolved[1] == cfg[1]


@pytest.mark.parametrize("tick, lot, min_notional, key, words", [
    ("0.005", "0.00001", "10", "instruments[0].tick_size",
     "0.005 is not a multiple of the venue's PRICE_FILTER.tickSize 0.01"),
    ("0.015", "0.00001", "10", "instruments[0].tick_size", "0.015 is not a multiple"),
    ("0.01", "0.000001", "10", "instruments[0].lot_size",
     "0.000001 is finer than the venue's LOT_SIZE.stepSize 0.00001"),
    ("0.01", "0.000015", "10", "instruments[0].lot_size", "not a multiple of the venue's LOT_SIZE.stepSize"),
    ("0.01", "0.00001", "5", "instruments[0].min_notional", "5 is below the venue's minimum notional 10"),
])  # fmt: skip
def test_a_config_value_that_contradicts_the_venue_is_an_error_naming_the_key(nautilus_info, tick, lot, min_notional,
                                                                               key, words):
    with pytest.raises(ConfigError) as ei:
        merge_with_config([inst(0, "BTCUSDT", tick, lot, min_notional)], nautilus_info)
    assert ei.value.path == key and words in str(ei.value) and "BTCUSDT" in str(ei.value)


def test_merge_of_an_instrument_the_venue_lacks_is_an_error_naming_it(nautilus_info):
    with pytest.raises(VenueInfoError, match="XRPUSDT"):
        merge_with_config([inst(0, "XRPUSDT", venue=True)], nautilus_info)


def test_config_min_notional_zero_leaves_the_venue_minimum(nautilus_info):
    merged = merge_with_config([inst(0, "BTCUSDT", "0.01", "0.00001", "0")], nautilus_info)
    assert merged.symbols["BTCUSDT"].min_notional == X("10")


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------
_INT64 = st.integers(0, INT64_MAX)


@settings(max_examples=400, deadline=None)
@given(a=st.one_of(_INT64, st.integers(0, 10**13)), b=st.one_of(_INT64, st.integers(0, 10**13)),
       limit=st.one_of(_INT64, st.integers(0, 10**12)))  # fmt: skip
def test_cmp_product_is_exact_over_the_whole_int64_range(a, b, limit):
    want = (a * b > limit * 10**8) - (a * b < limit * 10**8)
    assert cmp_product(a, b, limit) == want


def test_cmp_product_at_the_edges_of_its_fast_path_and_of_int64():
    S = 10**8
    for a, b in [(INT64_MAX, INT64_MAX), (INT64_MAX, 1), (1, INT64_MAX), (S, INT64_MAX), (S + 1, INT64_MAX),
                 ((2**31 - 1) * S, 42 * S), (2**31 * S, 42 * S), (92233720367 * S, 1), (3 * S, 30744573456 * S),
                 (INT64_MAX // 10, INT64_MAX // 10), (INT64_MAX // 10 + 1, S + 1), (INT64_MAX // 10, 10 * S + 1),
                 (S + 1, S + 1), (S - 1, INT64_MAX), (INT64_MAX // 10 + 1, 9)]:
        exact = a * b
        for limit in {0, 1, exact // S - 1, exact // S, exact // S + 1, INT64_MAX}:
            if 0 <= limit <= INT64_MAX:
                assert cmp_product(a, b, limit) == (exact > limit * S) - (exact < limit * S), (a, b, limit)


# Real symbols (2021 bodies) plus crafted ones with today's filters; the reference price scale of each.
_REAL = [("cryptofeed/2021-10-12_ce58c2a/BINANCE.0", "BTCUSDT", "57000"),
         ("cryptofeed/2021-10-12_ce58c2a/BINANCE.0", "SHIBUSDT", "0.00002500"),
         ("cryptofeed/2021-10-12_ce58c2a/BINANCE.0", "BLZETH", "0.00006"),
         ("cryptofeed/2021-10-12_ce58c2a/BINANCE.0", "BTCUPUSDT", "90"),
         ("cryptofeed/2021-04-17_be4e5c8/BINANCE_US.0", "BTCUSD", "61000"),
         (NAUTILUS_INFO, "ETHUSDT", "4000")]  # fmt: skip
_CRAFTED = [
    crafted_symbol("NEWUSDT"),
    crafted_symbol("MKTUSDT", notional={"filterType": "NOTIONAL", "minNotional": "5", "applyMinToMarket": False,
                                        "maxNotional": "1000", "applyMaxToMarket": True, "avgPriceMins": 5},
                   pps=False, order_types=["LIMIT", "MARKET"],
                   min_notional={"filterType": "MIN_NOTIONAL", "minNotional": "7", "applyToMarket": False,
                                 "avgPriceMins": 1},
                   extra=({"filterType": "PERCENT_PRICE", "multiplierUp": "1.3000", "multiplierDown": "0.7000",
                           "avgPriceMins": 0},)),
]  # fmt: skip


@pytest.fixture(scope="module")
def universe(shared_data):
    """(table, raw symbol objects, reference price scale) over the real and crafted symbols, row = index."""
    raws, scales, infos = [], [], {}
    for rel, name, scale in _REAL:
        body = body_of(shared_data, rel)
        raws.append(raw_symbol(body, name))
        scales.append(X(scale))
        infos[name] = parse_exchange_info(body, [name]).symbols[name]
    crafted = parse_exchange_info(crafted_body(*_CRAFTED), [s["symbol"] for s in _CRAFTED])
    for raw in _CRAFTED:
        raws.append(raw)
        scales.append(X("60000"))
        infos[raw["symbol"]] = crafted.symbols[raw["symbol"]]
    table = build_filter_table(VenueInfo(symbols=infos), [r["symbol"] for r in raws])
    return table, raws, scales


def _order(data, table, scales):
    row = data.draw(st.integers(0, len(scales) - 1), "row")
    scale, tick, step = scales[row], max(int(table[row, F.C_TICK]), 1), max(int(table[row, F.C_STEP]), 1)
    ref = data.draw(st.one_of(st.just(0), st.integers(scale // 3, scale * 3), st.integers(0, INT64_MAX)), "ref")
    base = ref or scale
    price = data.draw(st.one_of(
        st.integers(0, 60).map(lambda k: min(base * k // 10, INT64_MAX) // tick * tick),  # on tick, 0x..6x ref
        st.integers(1, min(8 * base, INT64_MAX)), st.integers(0, INT64_MAX),
        st.sampled_from([int(table[row, c]) for c in (F.C_MIN_PRICE, F.C_MAX_PRICE)]).flatmap(
            lambda p: st.integers(max(p - 2 * tick, 0), p + 2 * tick))), "price")  # fmt: skip
    lim = [int(table[row, c]) for c in (F.C_MIN_QTY, F.C_MAX_QTY, F.C_MKT_MAX_QTY)]
    qty = data.draw(st.one_of(
        st.integers(1, 10**6).map(lambda k: k * step), st.integers(1, min(2 * max(lim), INT64_MAX)),
        st.integers(0, INT64_MAX),
        st.sampled_from(lim).flatmap(lambda q: st.integers(max(q - 2 * step, 0), q + 2 * step)),
        st.integers(X("1"), X("12")).map(lambda n: -(-n * 10**8 // max(price or base, 1)) // step * step)),
        "qty")  # fmt: skip
    return row, ref, price, qty


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_check_order_agrees_with_the_decimal_reference_of_filters_md(universe, data):
    table, raws, scales = universe
    row, ref, price, qty = _order(data, table, scales)
    side = data.draw(st.sampled_from([SIDE_BUY, SIDE_SELL]), "side")
    otype = data.draw(st.sampled_from([OT_LIMIT, OT_LIMIT_MAKER, OT_MARKET]), "otype")
    if otype != OT_MARKET and price <= 0:
        assert check_order(table, row, side, otype, price, qty, ref) == F.F_INVALID
        return
    if qty <= 0:
        assert check_order(table, row, side, otype, price, qty, ref) == F.F_INVALID
        return
    want = reference_check(raws[row], side, otype, price, qty, ref)
    assert kernel_check(table, row, side, otype, price, qty, ref) == want


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_rounded_qty_is_on_the_step_not_above_the_input_and_accepted_within_the_limits(universe, data):
    table, raws, scales = universe
    row, ref, price, qty = _order(data, table, scales)
    market = data.draw(st.booleans(), "market")
    rq = round_qty_down(table, row, qty, market)
    step = int(table[row, F.C_MKT_ROUND_STEP if market else F.C_STEP])
    if qty <= 0:
        assert rq == 0
        return
    assert 0 <= rq <= qty and rq % step == 0 and qty - rq < step
    assert rq % int(table[row, F.C_STEP]) == 0
    if market and table[row, F.C_MKT_STEP]:
        assert rq % int(table[row, F.C_MKT_STEP]) == 0
    # at a price the filters accept (on the tick, inside PRICE_FILTER, ref = price so inside every band), the
    # rounded qty is accepted exactly when it lies within the qty limits and its notional within the notional ones
    otype = OT_MARKET if market else OT_LIMIT
    lo, hi = int(table[row, F.C_MIN_PRICE]), int(table[row, F.C_MAX_PRICE])
    px = round_price(table, row, data.draw(st.integers(max(lo, 1), max(hi, lo, 1)), "px"), SIDE_BUY)
    if rq <= 0:
        return
    t = table[row]
    within = t[F.C_MIN_QTY] <= rq <= t[F.C_MAX_QTY] and (
        not market or t[F.C_MKT_MIN_QTY] <= rq and (t[F.C_MKT_MAX_QTY] == 0 or rq <= t[F.C_MKT_MAX_QTY]))
    with decimal.localcontext(_CTX):
        n = to_decimal(px) * to_decimal(rq)
        f = {x["filterType"]: x for x in raws[row]["filters"]}
        g, h = f.get("MIN_NOTIONAL"), f.get("NOTIONAL")
        notional_ok = not (g and (not market or g["applyToMarket"]) and n < Decimal(g["minNotional"])) and not (
            h and (not market or h["applyMinToMarket"]) and n < Decimal(h["minNotional"])) and not (
            h and (not market or h["applyMaxToMarket"]) and n > Decimal(h["maxNotional"]))
    assert (check_order(table, row, SIDE_BUY, otype, px, rq, px) == F.F_OK) == bool(within and notional_ok)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_price_rounds_down_for_buys_and_up_for_sells_onto_the_tick(universe, data):
    table, _raws, scales = universe
    row = data.draw(st.integers(0, len(scales) - 1))
    px = data.draw(st.one_of(st.integers(1, 10 * scales[row]), st.integers(1, INT64_MAX)))
    tick = int(table[row, F.C_TICK])
    buy, sell = round_price(table, row, px, SIDE_BUY), round_price(table, row, px, SIDE_SELL)
    assert buy % tick == 0 and buy <= px < buy + tick
    if px + tick <= INT64_MAX:
        assert sell % tick == 0 and sell >= px > sell - tick
    else:
        assert sell in (0, px)
    assert round_price(table, row, px, 0) in (0, px) and round_price(table, row, 0, SIDE_BUY) == 0


def test_notional_exactly_at_the_minimum_passes_and_one_step_below_fails(universe):
    table, raws, _ = universe
    rows = {r["symbol"]: i for i, r in enumerate(raws)}
    cases = [("BTCUSDT", "10000.00", "0.00100", "0.00001", F.F_MIN_NOTIONAL),  # 10 USDT = minNotional 10
             ("SHIBUSDT", "0.00002500", "400000", "1", F.F_MIN_NOTIONAL),  # 10 USDT
             ("BLZETH", "0.00000500", "1000", "1", F.F_MIN_NOTIONAL),  # 0.005 ETH
             ("NEWUSDT", "2500.00", "0.00200", "0.00001", F.F_NOTIONAL)]  # NOTIONAL min 5
    for name, px, qty, step, code in cases:
        r = rows[name]
        for otype, ref in ((OT_LIMIT, 0), (OT_MARKET, X(px))):
            assert check_order(table, r, SIDE_BUY, otype, X(px), X(qty), ref) == F.F_OK, (name, otype)
            assert check_order(table, r, SIDE_SELL, otype, X(px), X(qty) - X(step), ref) == code, (name, otype)
    # 3333.33 * 0.003 = 9.99999 < 10 < 3333.34 * 0.003 = 10.00002: sub-cent products are compared exactly
    btc = rows["BTCUSDT"]
    assert check_order(table, btc, SIDE_BUY, OT_LIMIT, X("3333.33"), X("0.003"), 0) == F.F_MIN_NOTIONAL
    assert check_order(table, btc, SIDE_BUY, OT_LIMIT, X("3333.34"), X("0.003"), 0) == F.F_OK


def test_market_orders_use_the_reference_price_and_the_apply_to_market_flags(universe):
    table, raws, _ = universe
    mkt = next(i for i, r in enumerate(raws) if r["symbol"] == "MKTUSDT")
    # MIN_NOTIONAL 7 (applyToMarket false), NOTIONAL 5..1000 (applyMinToMarket false, applyMaxToMarket true)
    small, big = X("0.00001"), X("0.1")
    assert check_order(table, mkt, SIDE_BUY, OT_LIMIT, X("60000.00"), small, 0) == F.F_MIN_NOTIONAL
    assert check_order(table, mkt, SIDE_BUY, OT_MARKET, 0, small, X("60000")) == F.F_OK  # min not applied to MARKET
    assert check_order(table, mkt, SIDE_BUY, OT_MARKET, 0, X("0.01666"), X("60000")) == F.F_OK  # 999.6
    assert check_order(table, mkt, SIDE_BUY, OT_MARKET, 0, big, X("60000")) == F.F_MAX_NOTIONAL  # 6000 > 1000
    assert check_order(table, mkt, SIDE_BUY, OT_MARKET, 0, big, 0) == F.F_OK  # no reference: skipped
    assert check_order(table, mkt, SIDE_BUY, OT_LIMIT_MAKER, X("60000.00"), big, 0) == F.F_ORDER_TYPE
    new = next(i for i, r in enumerate(raws) if r["symbol"] == "NEWUSDT")  # NOTIONAL max 9e6 not applied to MARKET
    assert check_order(table, new, SIDE_SELL, OT_MARKET, 0, X("95.5"), X("1000000")) == F.F_OK
    assert check_order(table, new, SIDE_SELL, OT_LIMIT, X("1000000.00"), X("95.5"), 0) == F.F_MAX_NOTIONAL
    assert check_order(table, new, SIDE_SELL, OT_MARKET, 0, X("95.50001"), X("60000")) == F.F_MARKET_LOT_SIZE
    assert check_order(table, new, SIDE_SELL, OT_MARKET, 0, X("0.000015"), X("60000")) == F.F_LOT_SIZE


def test_percent_price_by_side_uses_the_bid_band_for_buys_and_the_ask_band_for_sells(universe):
    table, raws, _ = universe
    new = next(i for i, r in enumerate(raws) if r["symbol"] == "NEWUSDT")  # bid 0.2..1.2, ask 0.8..5
    ref = X("100")
    for side, lo, hi in ((SIDE_BUY, "20.00", "120.00"), (SIDE_SELL, "80.00", "500.00")):
        assert check_order(table, new, side, OT_LIMIT, X(lo), X("1"), ref) == F.F_OK
        assert check_order(table, new, side, OT_LIMIT, X(hi), X("0.05"), ref) == F.F_OK
        assert check_order(table, new, side, OT_LIMIT, X(lo) - X("0.01"), X("1"), ref) == F.F_PERCENT_PRICE_BY_SIDE
        assert check_order(table, new, side, OT_LIMIT, X(hi) + X("0.01"), X("0.05"), ref) == F.F_PERCENT_PRICE_BY_SIDE
    btc = next(i for i, r in enumerate(raws) if r["symbol"] == "BTCUSDT")  # PERCENT_PRICE 0.2..5
    assert check_order(table, btc, SIDE_BUY, OT_LIMIT, X("300000.00"), X("0.001"), X("60000")) == F.F_OK
    assert check_order(table, btc, SIDE_BUY, OT_LIMIT, X("300000.01"), X("0.001"), X("60000")) == F.F_PERCENT_PRICE


def test_huge_products_are_rejected_as_over_the_maximum_not_wrapped():
    sym = crafted_symbol("BIGUSDT", pps=False)
    sym["filters"][0].update(maxPrice="0")
    sym["filters"][1].update(maxQty="0")
    table = parse_exchange_info(crafted_body(sym), ["BIGUSDT"]).filter_table()
    huge = INT64_MAX // X("0.01") * X("0.01")
    assert check_order(table, 0, SIDE_BUY, OT_LIMIT, huge, huge // 1000 * 1000, 0) == F.F_MAX_NOTIONAL
    assert check_order(table, 0, SIDE_BUY, OT_LIMIT, X("0.01"), X("0.00001"), 0) == F.F_NOTIONAL


def test_bad_arguments_and_open_order_limits():
    table = parse_exchange_info(crafted_body(crafted_symbol()), ["NEWUSDT"]).filter_table()
    ok = (X("60000.00"), X("0.001"), X("60000"))
    assert check_order(table, 0, SIDE_BUY, OT_LIMIT, *ok) == F.F_OK
    for args in [(1, SIDE_BUY, OT_LIMIT), (-1, SIDE_BUY, OT_LIMIT), (0, 0, OT_LIMIT), (0, 2, OT_LIMIT),
                 (0, SIDE_BUY, 0), (0, SIDE_BUY, 9)]:
        assert check_order(table, *args, *ok) == F.F_INVALID, args
    assert check_order(table, 0, SIDE_BUY, OT_LIMIT, X("60000.00"), 0, 0) == F.F_INVALID
    assert check_order(table, 0, SIDE_BUY, OT_LIMIT, 0, X("0.001"), 0) == F.F_INVALID
    assert round_qty_down(table, 5, X("1"), False) == 0 and round_price(table, 5, X("1"), SIDE_BUY) == 0
    assert check_open_orders(table, 0, 199) == F.F_OK and check_open_orders(table, 0, 200) == F.F_MAX_NUM_ORDERS
    assert check_open_orders(table, 1, 0) == F.F_INVALID


def test_reason_names_match_binances_filter_failure_messages():
    assert reason_text(F.F_LOT_SIZE) == "Filter failure: LOT_SIZE"
    assert reason_text(F.F_MAX_NOTIONAL) == "Filter failure: NOTIONAL" == reason_text(F.F_NOTIONAL)
    assert {FILTER_NAMES[c] for c in FILTER_NAMES} == {
        "PRICE_FILTER", "PERCENT_PRICE", "PERCENT_PRICE_BY_SIDE", "LOT_SIZE", "MARKET_LOT_SIZE", "MIN_NOTIONAL",
        "NOTIONAL", "MAX_NUM_ORDERS"}  # fmt: skip
    assert len(set(F.REASON_NAMES.values())) == len(F.REASON_NAMES)
    assert reason_text(F.F_INVALID) == "INVALID_ORDER" and reason_text(0) == "OK"


def test_kernels_compile_without_the_numba_runtime():
    F.warm()
    for kernel in (cmp_product, round_qty_down, round_price, check_order, check_open_orders):
        assert kernel.targetoptions.get("_nrt") is False
        for sig in kernel.signatures:
            # the cached dispatcher cannot be inspected (numba returns nothing for cached code): compile a fresh,
            # uncached copy of the same function with the same options and read its LLVM
            fresh = nb.njit(nogil=True, _nrt=False)(kernel.py_func)
            fresh.compile(sig)
            llvm = fresh.inspect_llvm(sig)
            assert "define" in llvm and "NRT_" not in llvm, kernel.py_func.__name__


def test_filter_table_rows_are_whole_cache_lines():
    assert N_COLS * 8 % 64 == 0
    info = parse_exchange_info(crafted_body(crafted_symbol()), ["NEWUSDT"])
    t = build_filter_table(info, ["NEWUSDT", "NEWUSDT"])
    assert t.flags.c_contiguous and t.strides == (N_COLS * 8, 8) and np.array_equal(t[0], t[1])
    with pytest.raises(VenueInfoError, match="ZZZUSDT"):
        build_filter_table(info, ["ZZZUSDT"])


def test_crafted_bodies_are_not_mutated_by_parsing():
    body = crafted_body(crafted_symbol())
    before = copy.deepcopy(body)
    info = parse_exchange_info(body, ["NEWUSDT"])
    info.symbols["NEWUSDT"].other_filters[0]["limit"] = 1
    assert body == before
