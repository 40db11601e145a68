"""Simulator configuration: the ``simulator`` section of the system config.

Every value has an offline default (127.0.0.1, fixed port 9010 (the
market_data.ws_url/rest_url of config/system.json), seed 42, a
light 2000 events/s) so ``python -m processes.simulator`` runs on a laptop
with no network. ``SimulatorConfig.from_dict`` rejects unknown keys, wrong
types and out-of-range values with ``ConfigError("<path>.<key>", problem)``.

Example (all keys optional)::

    "simulator": {
      "host": "127.0.0.1", "port": 9010, "seed": 42, "rate": 2000,
      "depth_levels": 1000, "tick_ms": 100,
      "ping_interval_s": 20, "pong_timeout_s": 60, "ws_api_max_lifetime_s": 86400,
      "weight_limit_per_minute": 6000, "ban_after_429s": 3, "ban_s": 120,
      "replay": [], "replay_speed": 1.0,
      "symbols": {"BTCUSDT": {"tick_size": "0.01", "step_size": "0.00001", "start_price": "60000"}},
      "faults": {"gap_probability": 0.0, "rest_status_sequence": [429, 500]},
      "accounts": [{"name": "main", "api_key_env": "BINANCE_SIM_API_KEY",
                    "api_secret_env": "BINANCE_SIM_API_SECRET", "key_type": "hmac",
                    "balances": {"USDT": "100000", "BTC": "1"}}],
      "fees": {"maker": "0.001", "taker": "0.001"},
      "orders_per_10s": 100, "orders_per_day": 200000, "max_open_orders": 200,
      "queue_model": "trade_through"
    }

The order side's keys (accounts, fees, order limits, queue model) are
documented in accounts.py and orders.py; its faults in faults.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from core.errors import ConfigError, FixedPointError
from core.fixedpoint import from_fixed, to_fixed
from core.hostile import CLASSES as HOSTILE_CLASSES
from processes.simulator.accounts import AccountConfig, FeeConfig, parse_accounts

DEFAULT_PORT = 9010  # config/system.json points market_data.ws_url and rest_url here

# Binance Spot tick/step for the default instruments (exchangeInfo, 2024).
DEFAULT_SYMBOL_SPECS: dict[str, dict[str, str]] = {
    "BTCUSDT": {"tick_size": "0.01", "step_size": "0.00001", "start_price": "60000.00"},
    "ETHUSDT": {"tick_size": "0.01", "step_size": "0.0001", "start_price": "3000.00"},
}
# Anything else gets a generic spec; start_price only sets the scale of the walk.
GENERIC_SYMBOL_SPEC = {"tick_size": "0.01", "step_size": "0.001", "start_price": "100.00"}

REST_FAULT_STATUSES = (418, 429, 500, 502, 503, 504)
# order_fault_sequence entries: what the next order-entry requests get (faults.py documents each)
ORDER_FAULTS = ("ok", "drop", "hang", "418", "429", "500", "502", "503", "504")
QUEUE_MODEL_NAMES = ("trade_through", "queue_position")
MAX_SKEW_MS = 20 * 366 * 86_400_000  # wide enough to set the server clock to a documented example's date


def _check_keys(d: Mapping[str, Any], allowed: set[str], path: str) -> None:
    if not isinstance(d, Mapping):
        raise ConfigError(path, f"must be an object, got {type(d).__name__}")
    for key in d:
        if key.startswith("_comment"):
            continue  # the project's convention for comments in JSON
        if key not in allowed:
            raise ConfigError(f"{path}.{key}", f"is not a known key (known: {', '.join(sorted(allowed))})")


def _num(d: Mapping, key: str, path: str, default, *, kind=float, lo=None, hi=None, lo_open=False):
    if key not in d:
        return default
    v = d[key]
    p = f"{path}.{key}"
    if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int):
        raise ConfigError(p, f"must be {'a number' if kind is float else 'an integer'}, got {v!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ConfigError(p, f"must be {'>' if lo_open else '>='} {lo:g}, got {v!r}")
    if hi is not None and v > hi:
        raise ConfigError(p, f"must be <= {hi:g}, got {v!r}")
    return kind(v)


def _prob(d: Mapping, key: str, path: str) -> float:
    return _num(d, key, path, 0.0, lo=0.0, hi=1.0)


def _choice(d: Mapping, key: str, path: str, default: str, choices: tuple[str, ...]) -> str:
    v = d.get(key, default)
    if v not in choices:
        raise ConfigError(f"{path}.{key}", f"must be one of {list(choices)}, got {v!r}")
    return v


def _str(d: Mapping, key: str, path: str, default: str) -> str:
    if key not in d:
        return default
    v = d[key]
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{path}.{key}", f"must be a non-empty string, got {v!r}")
    return v


@dataclass(frozen=True, kw_only=True)
class FaultConfig:
    """Fault injection; every fault is off by default. Probabilities are per message."""

    disconnect_after_messages: int = 0  # close each WS connection after N data frames (0 = never)
    disconnect_probability: float = 0.0  # chance to close a connection before any data frame
    gap_probability: float = 0.0  # chance to drop a depth diff on one connection (U jumps past u+1)
    duplicate_probability: float = 0.0  # chance to send a data frame twice
    reorder_probability: float = 0.0  # chance to hold a data frame back behind the next one
    malformed_probability: float = 0.0  # chance to insert a truncated JSON frame before a data frame
    hostile_probability: float = 0.0  # chance to insert a hostile frame (core.hostile) before a data frame
    hostile_classes: tuple[str, ...] = ()  # the classes drawn from, uniformly (empty: every one of HOSTILE_CLASSES)
    snapshot_delay_ms: int = 0  # delay before answering GET /api/v3/depth
    snapshot_fail_count: int = 0  # answer the next N depth requests with snapshot_fail_status
    snapshot_fail_status: int = 503  # HTTP status of a failed snapshot
    rest_status_sequence: tuple[int, ...] = ()  # answer the next REST calls with these statuses, in order
    retry_after_s: int = 5  # Retry-After of injected 429/418 answers
    order_fault_sequence: tuple[str, ...] = ()  # the next order-entry requests get these (ORDER_FAULTS), in order
    order_hang_s: float = 15.0  # "hang": the answer (a 504 -1007) is held this long, past a client's timeout
    order_ack_delay_ms: int = 0  # every order-entry answer is sent this late (the order is live at once)
    clock_skew_ms: int = 0  # the REST server clock runs this far ahead (< 0: behind) of the host clock
    user_event_duplicate_probability: float = 0.0  # WS API: chance to send a user-data event frame twice
    user_event_reorder_probability: float = 0.0  # WS API: chance to hold a user-data event behind the next one

    KEYS = frozenset(
        {
            "disconnect_after_messages", "disconnect_probability", "gap_probability",
            "duplicate_probability", "reorder_probability", "malformed_probability",
            "hostile_probability", "hostile_classes",
            "snapshot_delay_ms", "snapshot_fail_count", "snapshot_fail_status",
            "rest_status_sequence", "retry_after_s", "order_fault_sequence", "order_hang_s",
            "order_ack_delay_ms", "clock_skew_ms", "user_event_duplicate_probability",
            "user_event_reorder_probability",
        }
    )  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "simulator.faults") -> "FaultConfig":
        _check_keys(d, set(cls.KEYS), path)
        seq = d.get("rest_status_sequence", [])
        if not isinstance(seq, (list, tuple)):
            raise ConfigError(f"{path}.rest_status_sequence", f"must be a list of HTTP statuses, got {seq!r}")
        for i, s in enumerate(seq):
            if isinstance(s, bool) or not isinstance(s, int) or s not in REST_FAULT_STATUSES:
                raise ConfigError(
                    f"{path}.rest_status_sequence[{i}]", f"must be one of {list(REST_FAULT_STATUSES)}, got {s!r}"
                )
        fail_status = _num(d, "snapshot_fail_status", path, 503, kind=int, lo=400, hi=599)
        oseq = d.get("order_fault_sequence", [])
        if not isinstance(oseq, (list, tuple)):
            raise ConfigError(f"{path}.order_fault_sequence", f"must be a list, got {oseq!r}")
        oseq = [str(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in oseq]
        for i, s in enumerate(oseq):
            if s not in ORDER_FAULTS:
                raise ConfigError(f"{path}.order_fault_sequence[{i}]", f"must be one of {list(ORDER_FAULTS)}, got {s!r}")
        hcls = d.get("hostile_classes", [])
        if not isinstance(hcls, (list, tuple)):
            raise ConfigError(f"{path}.hostile_classes", f"must be a list of class names, got {hcls!r}")
        for i, c in enumerate(hcls):
            if c not in HOSTILE_CLASSES:
                raise ConfigError(f"{path}.hostile_classes[{i}]", f"must be one of {list(HOSTILE_CLASSES)}, got {c!r}")
        return cls(
            disconnect_after_messages=_num(d, "disconnect_after_messages", path, 0, kind=int, lo=0),
            disconnect_probability=_prob(d, "disconnect_probability", path),
            gap_probability=_prob(d, "gap_probability", path),
            duplicate_probability=_prob(d, "duplicate_probability", path),
            reorder_probability=_prob(d, "reorder_probability", path),
            malformed_probability=_prob(d, "malformed_probability", path),
            hostile_probability=_prob(d, "hostile_probability", path),
            hostile_classes=tuple(hcls),
            snapshot_delay_ms=_num(d, "snapshot_delay_ms", path, 0, kind=int, lo=0, hi=600_000),
            snapshot_fail_count=_num(d, "snapshot_fail_count", path, 0, kind=int, lo=0),
            snapshot_fail_status=fail_status,
            rest_status_sequence=tuple(seq),
            retry_after_s=_num(d, "retry_after_s", path, 5, kind=int, lo=0, hi=86_400),
            order_fault_sequence=tuple(oseq),
            order_hang_s=_num(d, "order_hang_s", path, 15.0, lo=0.0, hi=3600.0),
            order_ack_delay_ms=_num(d, "order_ack_delay_ms", path, 0, kind=int, lo=0, hi=600_000),
            clock_skew_ms=_num(d, "clock_skew_ms", path, 0, kind=int, lo=-MAX_SKEW_MS, hi=MAX_SKEW_MS),
            user_event_duplicate_probability=_prob(d, "user_event_duplicate_probability", path),
            user_event_reorder_probability=_prob(d, "user_event_reorder_probability", path),
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rest_status_sequence"] = list(self.rest_status_sequence)
        d["order_fault_sequence"] = list(self.order_fault_sequence)
        d["hostile_classes"] = list(self.hostile_classes)
        return d


@dataclass(frozen=True, kw_only=True)
class SymbolSpec:
    """One simulated instrument: Binance symbol, tick and step as exchangeInfo spells them."""

    symbol: str  # upper case, e.g. "BTCUSDT"
    tick_size: str = "0.01"  # PRICE_FILTER.tickSize
    step_size: str = "0.001"  # LOT_SIZE.stepSize
    start_price: str = "100.00"  # where the generator's mid-price walk starts
    min_notional: str = "5"  # NOTIONAL.minNotional

    def __post_init__(self) -> None:
        for name in ("tick_size", "step_size", "start_price", "min_notional"):
            try:
                v = to_fixed(getattr(self, name))
            except FixedPointError as exc:
                raise ConfigError(f"simulator.symbols.{self.symbol}.{name}", str(exc)) from exc
            if v <= 0:
                raise ConfigError(f"simulator.symbols.{self.symbol}.{name}", f"must be > 0, got {getattr(self, name)!r}")
        if to_fixed(self.start_price) % to_fixed(self.tick_size):
            raise ConfigError(
                f"simulator.symbols.{self.symbol}.start_price",
                f"must be a multiple of tick_size {self.tick_size}, got {self.start_price}",
            )


@dataclass(frozen=True, kw_only=True)
class SimulatorConfig:
    """The local Binance Spot exchange simulator (see module docstring)."""

    host: str = "127.0.0.1"  # bind address; loopback unless you mean it
    port: int = DEFAULT_PORT  # 0 = ephemeral (tests); the bound port is reported by serve()
    seed: int = 42  # seeds the market generator and every fault decision
    rate: float = 2000.0  # generated events/s over all symbols (level changes + trades)
    depth_levels: int = 1000  # price levels per side the generated book may hold
    tick_ms: int = 100  # generation step; 100 ms diffs aggregate 100/tick_ms steps
    wire_decimals: int = 8  # decimals of prices/qtys on the wire (Binance Spot sends 8)
    ping_interval_s: float = 20.0  # server WS ping period (Binance: 20 s)
    pong_timeout_s: float = 60.0  # close a connection whose pong is this late (Binance: 1 min)
    ws_api_max_lifetime_s: float = 86_400.0  # a /ws-api/v3 connection is closed (1001) after this (Binance: 24 h)
    weight_limit_per_minute: int = 6000  # REQUEST_WEIGHT per IP per minute; beyond -> 429
    ban_after_429s: int = 3  # answer 418 after this many 429s in one window (0 = never ban)
    ban_s: int = 120  # duration of a 418 ban (Retry-After)
    max_client_queue: int = 100  # batches (one per tick) queued to one WS client before it is dropped as too slow
    replay: tuple[str, ...] = ()  # recording files/folders to replay instead of generating
    replay_speed: float = 1.0  # 1 = recorded speed, 2 = twice as fast, 0 = as fast as possible
    symbols: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # per-symbol overrides
    faults: FaultConfig = field(default_factory=FaultConfig)
    accounts: tuple[AccountConfig, ...] = ()  # () = the default account "main" (accounts.py)
    fees: FeeConfig = field(default_factory=FeeConfig)  # maker/taker rates, optional fee asset
    orders_per_10s: int = 100  # ORDERS limit per account per 10 s (exchangeInfo rateLimits); beyond -> 429 -1015
    orders_per_day: int = 200_000  # ORDERS limit per account per day
    max_open_orders: int = 200  # MAX_NUM_ORDERS: open orders per account per symbol
    queue_model: str = "trade_through"  # how resting orders fill: "trade_through" | "queue_position"

    KEYS = frozenset(
        {
            "host", "port", "seed", "rate", "depth_levels", "tick_ms", "wire_decimals",
            "ping_interval_s", "pong_timeout_s", "ws_api_max_lifetime_s", "weight_limit_per_minute", "ban_after_429s",
            "ban_s", "max_client_queue", "replay", "replay_speed", "symbols", "faults",
            "accounts", "fees", "orders_per_10s", "orders_per_day", "max_open_orders", "queue_model",
        }
    )  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, path: str = "simulator") -> "SimulatorConfig":
        d = {} if d is None else d
        _check_keys(d, set(cls.KEYS), path)
        tick_ms = _num(d, "tick_ms", path, 100, kind=int, lo=1, hi=100)
        if 100 % tick_ms:
            raise ConfigError(f"{path}.tick_ms", f"must divide 100 (10, 20, 25, 50, 100), got {tick_ms}")
        replay = d.get("replay", [])
        if isinstance(replay, str):
            replay = [replay]
        if not isinstance(replay, (list, tuple)) or not all(isinstance(p, str) and p for p in replay):
            raise ConfigError(f"{path}.replay", f"must be a list of paths, got {replay!r}")
        symbols = d.get("symbols", {})
        _check_keys(symbols, set(symbols) if isinstance(symbols, Mapping) else set(), f"{path}.symbols")
        for sym, spec in symbols.items():
            _check_keys(spec, {"tick_size", "step_size", "start_price", "min_notional"}, f"{path}.symbols.{sym}")
            for k, v in spec.items():
                if not isinstance(v, str):
                    raise ConfigError(f"{path}.symbols.{sym}.{k}", f"must be a decimal string, got {v!r}")
        return cls(
            host=_str(d, "host", path, "127.0.0.1"),
            port=_num(d, "port", path, DEFAULT_PORT, kind=int, lo=0, hi=65535),
            seed=_num(d, "seed", path, 42, kind=int, lo=0),
            rate=_num(d, "rate", path, 2000.0, lo=0.0, hi=10_000_000, lo_open=True),
            depth_levels=_num(d, "depth_levels", path, 1000, kind=int, lo=5, hi=5000),
            tick_ms=tick_ms,
            wire_decimals=_num(d, "wire_decimals", path, 8, kind=int, lo=0, hi=8),
            ping_interval_s=_num(d, "ping_interval_s", path, 20.0, lo=0.0, lo_open=True),
            pong_timeout_s=_num(d, "pong_timeout_s", path, 60.0, lo=0.0, lo_open=True),
            ws_api_max_lifetime_s=_num(d, "ws_api_max_lifetime_s", path, 86_400.0, lo=0.0, lo_open=True),
            weight_limit_per_minute=_num(d, "weight_limit_per_minute", path, 6000, kind=int, lo=1),
            ban_after_429s=_num(d, "ban_after_429s", path, 3, kind=int, lo=0),
            ban_s=_num(d, "ban_s", path, 120, kind=int, lo=1),
            max_client_queue=_num(d, "max_client_queue", path, 100, kind=int, lo=2),
            replay=tuple(replay),
            replay_speed=_num(d, "replay_speed", path, 1.0, lo=0.0),
            symbols={s.upper(): dict(v) for s, v in symbols.items()},
            faults=FaultConfig.from_dict(d.get("faults", {}), f"{path}.faults"),
            accounts=parse_accounts(d.get("accounts"), f"{path}.accounts"),
            fees=FeeConfig.from_dict(d.get("fees"), f"{path}.fees"),
            orders_per_10s=_num(d, "orders_per_10s", path, 100, kind=int, lo=1),
            orders_per_day=_num(d, "orders_per_day", path, 200_000, kind=int, lo=1),
            max_open_orders=_num(d, "max_open_orders", path, 200, kind=int, lo=1, hi=100_000),
            queue_model=_choice(d, "queue_model", path, "trade_through", QUEUE_MODEL_NAMES),
        )


def _attr(obj: Any, *names: str) -> Any:
    for n in names:
        v = obj.get(n) if isinstance(obj, Mapping) else getattr(obj, n, None)
        if v is not None:
            return v
    return None


def _as_text(v: Any) -> str | None:
    """Tick/step info as decimal text, from text (raw JSON) or a fixed-point int (core.config.Instrument).

    0 / missing / non-numeric text (e.g. "exchangeInfo") mean "not given": defaults apply.
    """
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, str):
        return v if v and v[0].isdigit() and to_fixed_or_zero(v) > 0 else None
    if isinstance(v, int):
        return from_fixed(v) if v > 0 else None  # core.config keeps FIXED_SCALE ints
    return None


def to_fixed_or_zero(text: str) -> int:
    try:
        return to_fixed(text)
    except FixedPointError:
        return 0


def resolve_symbols(instruments: Any, sim_cfg: SimulatorConfig) -> list[SymbolSpec]:
    """Build the simulated instrument list from the system config's instruments.

    Tolerant on purpose: an instrument may be a plain symbol string, a dict or an
    object with ``symbol`` and optional ``tick_size``/``step_size`` (or ``tick``,
    ``step``, ``lot_size``). ``simulator.symbols`` overrides win, then the
    instrument's own values, then Binance's values for BTCUSDT/ETHUSDT.
    """
    if instruments is None:
        instruments = list(sim_cfg.symbols) or list(DEFAULT_SYMBOL_SPECS)
    if isinstance(instruments, Mapping):
        # {"symbols": [...]} or {"BTCUSDT": {...}}
        instruments = instruments.get("symbols", instruments) if "symbols" in instruments else [
            {"symbol": k, **(v if isinstance(v, Mapping) else {})} for k, v in instruments.items()
        ]
    out: list[SymbolSpec] = []
    for inst in instruments:
        sym = inst if isinstance(inst, str) else _attr(inst, "symbol", "name")
        if not isinstance(sym, str) or not sym:
            raise ConfigError("instruments", f"an instrument has no symbol: {inst!r}")
        sym = sym.upper()
        spec = dict(DEFAULT_SYMBOL_SPECS.get(sym, GENERIC_SYMBOL_SPEC))
        if not isinstance(inst, str):
            tick = _as_text(_attr(inst, "tick_size", "tick", "tickSize"))
            step = _as_text(_attr(inst, "step_size", "step", "lot_size", "stepSize"))
            notional = _as_text(_attr(inst, "min_notional", "minNotional"))
            if tick:
                spec["tick_size"] = tick
            if step:
                spec["step_size"] = step
            if notional:
                spec["min_notional"] = notional
        spec.update(sim_cfg.symbols.get(sym, {}))
        tick_fx, start_fx = to_fixed(spec["tick_size"]), to_fixed(spec["start_price"])
        if start_fx % tick_fx:  # a coarser instrument tick than the default start: round down onto the grid
            spec["start_price"] = from_fixed(max(tick_fx, start_fx - start_fx % tick_fx))
        out.append(SymbolSpec(symbol=sym, **spec))
    if not out:
        raise ConfigError("instruments", "no symbols to simulate")
    return out
