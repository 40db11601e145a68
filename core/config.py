"""System configuration: one JSON file -> frozen, typed, per-subsystem objects.

``load_config(path)`` reads ``config/system.json`` (or another file), applies
environment overrides, validates everything and returns a ``SystemConfig``.
Every problem raises ``core.errors.ConfigError`` naming the key path and the
problem (``risk.max_position_size must be > 0, got -1``); the supervisor turns
it into exit code 2 before it starts anything.

Rules
-----
- Unknown keys are rejected at every level. Keys whose name starts with
  ``_comment`` (``"_comment"``, ``"_comment_cpus"``...) are accepted and
  ignored anywhere: JSON has no comments, so shipped configs explain
  themselves this way.
- Prices, quantities and money limits are written as decimal strings (or
  JSON numbers) and stored as exact fixed-point ``int`` (``FIXED_SCALE``).
- Environment overrides: ``RINGTRADER__<SECTION>__<KEY>[__<KEY>...]=<value>``,
  path segments separated by a double underscore (keys themselves contain
  single underscores), case-insensitive. The value is parsed as JSON when it
  parses (``5``, ``true``, ``[0,1]``, ``"x"``), else taken as a plain string.
  Examples: ``RINGTRADER__RISK__MAX_POSITION_SIZE=0.5``,
  ``RINGTRADER__PLACEMENT__FEED__CPUS=[1]``, ``RINGTRADER__MODE=paper``.
  An override goes through the same validation; its error names the variable.
- Secrets (API key and secret) are never read from the file (a key named
  like one is rejected with a pointer to the environment variable). They are
  read from the environment variables named in ``execution.api_key_env`` /
  ``execution.api_secret_env`` by ``load_secrets``; ``live`` mode requires them
  at start.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ConfigError, FixedPointError
from core.fixedpoint import to_fixed

MODES = ("sim", "paper", "live")
MD_SOURCES = ("exchange", "synthetic")
IDLE_STRATEGIES = ("backoff", "busy_spin", "futex")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
RING_POLICIES = ("block", "overwrite")

#: pipeline stages in pipeline order: every process runs its stages in this order in one duty cycle
STAGES = ("feed", "book", "signal", "risk", "execution")
PIPELINE = STAGES
#: the optional local exchange: a process of the placement, not a stage (it is the venue, not the pipeline)
SIMULATOR = "simulator"

#: ring name -> (dtype name in core.records, producer, consumers in consumer-index order)
RINGS = {
    "md": ("MD_EVENT", "feed", ("book",)),
    "book": ("BOOK_EVENT", "book", ("signal", "risk", "execution")),
    "signals": ("SIGNAL", "signal", ("risk",)),
    "orders": ("ORDER_REQUEST", "risk", ("execution", "journal")),
    "reports": ("EXEC_REPORT", "execution", ("risk", "journal")),
}
#: ring consumers that are not stages -> the stage whose process hosts them: the execution journal
#: (processes/journal.py) reads orders and reports on a thread of the execution stage, off its duty cycle
HOSTED_CONSUMERS = {"journal": "execution"}
#: rings that carry orders or their consequences: never dropped, so never ``overwrite``
ORDER_RINGS = ("signals", "orders", "reports")
#: a stage's event type -> the stage that acts on it (the supervisor forwards it as a command to that stage's
#: process): the book asks the feed for a snapshot; an operator or the breaker halts risk; cancel-all goes to
#: execution; a (re)started risk asks execution to reconcile the venue, and execution says when it has;
#: execution's measured venue clock offset goes to risk (its clock check)
EVENT_ROUTES = {"resync": "feed", "halt": "risk", "cancel_all": "execution", "reconcile": "execution",
                "reconciled": "risk", "clock_offset": "risk"}
#: stages driven by their own event loop (they sleep in epoll on a socket, not in an idle strategy): each must
#: be the only stage of its process
LOOP_STAGES = ("feed",)

ENV_PREFIX = "RINGTRADER__"
_SECRET_KEYS = ("api_key", "api_secret", "secret", "secret_key", "private_key")
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_UNIX_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_REQUIRED = object()


# ---------------------------------------------------------------------------
# Config objects
# ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Instrument:
    id: int  # instrument id carried in records: index in the ``instruments`` list
    symbol: str  # upper-case Binance symbol, e.g. "BTCUSDT"
    tick_size: int  # price step, fixed point; 0 = take it from exchangeInfo at start
    lot_size: int  # quantity step, fixed point; 0 = from exchangeInfo
    min_notional: int  # minimum price*qty, fixed point; 0 = from exchangeInfo
    from_exchange_info: bool  # filters come from GET /api/v3/exchangeInfo, not the file


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    rate_per_s: int = 2000  # market events (records) per second the synthetic source emits
    seed: int = 1  # RNG seed: the same seed gives the same event sequence
    depth_levels: int = 20  # levels per side the generator keeps and snapshots
    start_price: int = 100 * 10**8  # first mid price, fixed point
    tick_size: int = 10**6  # price step used for instruments whose filters come from exchangeInfo (0.01)
    lot_size: int = 10**3  # quantity step used likewise (0.00001)


@dataclass(frozen=True, kw_only=True)
class MarketDataConfig:
    source: str = "exchange"  # "exchange" (Binance or the simulator) | "synthetic" (seeded generator)
    ws_url: str = "ws://127.0.0.1:9010"  # market stream base URL
    rest_url: str = "http://127.0.0.1:9010"  # REST base URL (snapshots, exchangeInfo)
    streams: tuple[str, ...] = ("depth@100ms", "trade", "bookTicker")  # per-symbol stream suffixes
    snapshot_limit: int = 1000  # REST depth limit for book snapshots
    recording_dir: str | None = None  # when set, the feed records every frame here
    recording_rotate_mb: int = 256  # start a new recording file after this many MiB (uncompressed)
    recording_rotate_s: float = 3600.0  # ...or after this many seconds
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True, kw_only=True)
class BookSettings:
    """The ``book`` section: the book worker's books and bars (``core.book_worker_kernels.BookConfig``)."""

    levels_capacity: int = 8192  # price levels kept per side per symbol (a 5000-level REST snapshot must fit)
    buffer_capacity: int = 65536  # md records buffered per symbol while it waits for a snapshot
    bar_intervals_ms: tuple[int, ...] = (1_000, 60_000)  # time bar lengths, whole seconds (default 1s and 1m)
    bar_watermark_ms: int = 500  # a bar closes by timer this long after its end (estimated exchange time)
    emit_empty_bars: bool = True  # publish flat zero-volume bars for intervals without trades
    depth_throttle_ms: float = 100.0  # min gap between BK_DEPTH snapshots per symbol; 0 = every diff, < 0 = never


@dataclass(frozen=True, kw_only=True)
class SignalConfig:
    """The ``signal`` section. ``features`` and ``strategies`` are checked in depth (kernel parameters, model
    files and their feature contract) by ``core.strategies.SignalSettings.build`` before anything starts."""

    update_interval_ms: int = 1000  # least time between two top-of-book decisions of one strategy and symbol
    max_staleness_ms: int = 2000  # no signal from a top older than this, or a record that waited longer
    allow_pickle: bool = False  # pickle models execute code when loaded: only with this opt-in
    model_budget_us: float = 200.0  # time budget of one pickle model evaluation (over: no signal, counted)
    features: dict = field(default_factory=dict)  # core.features.FeatureConfig keys
    strategies: tuple = ()  # strategy objects (core.strategies), in id order (id = position + 1)


@dataclass(frozen=True, kw_only=True)
class RiskConfig:
    """The ``risk`` section (core/risk_kernels.py documents each check, the sizing, stops and breaker)."""

    max_position_size: int  # absolute position limit per instrument, fixed point (base units)
    max_order_qty: int  # largest single order quantity, fixed point
    max_order_notional: int  # largest single order price*qty, fixed point (quote units)
    max_open_orders: int  # our open orders, all instruments
    max_orders_per_s: int  # order rate limit (all instruments), per second
    max_daily_loss: int  # net P&L loss since the UTC day began that trips the breaker, fixed point (quote)
    price_band_pct: float  # deny limit prices further than this from the mid (fat finger)
    max_orders_per_10s: int = 50  # order rate per 10 s (kept below the venue's ORDERS limit)
    max_symbol_notional: int = 1000 * 10**8  # |position| + open orders per instrument at the mid, quote
    max_gross_notional: int = 2000 * 10**8  # the same over all instruments, quote
    max_open_positions: int = 2  # instruments with a non-zero position
    max_staleness_ms: int = 2000  # deny when the top is older than this (receive time)
    max_clock_offset_ms: int = 1000  # deny when |local - venue clock| exceeds this (execution measures it)
    max_slippage_bps: float = 50.0  # deny when the pre-trade slippage estimate exceeds this
    impact_k: float = 0.001  # square-root impact coefficient of the slippage estimate
    pnl_method: str = "fifo"  # fifo | lifo | average: the P&L that drives limits, stops and the breaker
    allow_short: bool = False  # Spot: a SELL needs inventory (False caps it at the long position)
    capital: int = 10000 * 10**8  # equity base of the drawdown breaker, quote
    sizing_mode: str = "fixed_qty"  # fixed_qty | fixed_notional | volatility
    sizing_qty: int = 10**5  # fixed_qty when the signal carries none (0.001)
    sizing_notional: int = 50 * 10**8  # fixed_notional, quote
    sizing_risk_per_trade: int = 5 * 10**8  # volatility: quote risked per trade = qty * atr_mult * ATR
    sizing_atr_mult: float = 2.0
    order_type: str = "market"  # market | limit_ioc | limit_gtc
    limit_offset_bps: float = 5.0  # limit orders: price = mid +- this (towards crossing)
    stop_loss_pct: float = 0.0  # 0 = off
    take_profit_pct: float = 0.0  # 0 = off
    trailing_stop_pct: float = 0.0  # 0 = off
    trailing_stop_abs: int = 0  # fixed point price distance; 0 = off
    max_drawdown_pct: float = 0.0  # from peak equity (capital + P&L); 0 = off
    max_consecutive_rejects: int = 5  # venue rejects in a row; 0 = off
    max_error_rate: float = 0.5  # rejects / outcomes over the last 20; 0 = off
    feed_stale_ms: int = 10000  # no book record for this long; 0 = off
    book_invalid_ms: int = 30000  # a book invalid this long; 0 = off
    latency_spike_us: int = 0  # tick-to-order latency above this ...; 0 = off
    latency_spikes: int = 5  # ... this many approvals in a row trips the breaker


@dataclass(frozen=True, kw_only=True)
class ExecutionConfig:
    rest_url: str = "http://127.0.0.1:9010"  # order REST base URL
    user_stream_url: str = "ws://127.0.0.1:9010"  # user-data stream base URL
    order_timeout_ms: int = 5000  # an order without an answer after this is queried by client id
    recv_window_ms: int = 5000  # Binance recvWindow (max 60000)
    api_key_env: str = "BINANCE_API_KEY"  # environment variable holding the API key
    api_secret_env: str = "BINANCE_API_SECRET"  # environment variable holding the API secret
    journal_dir: str = "var/journal"  # order/fill journal: <journal_dir>/<instance>.sqlite (relative: the project)
    ws_api_url: str | None = None  # sim/live: the WebSocket API; None: sim -> <market_data.ws_url>/ws-api/v3
    #                                (the simulator serves both), live -> Binance's wss://ws-api.binance.com:443/ws-api/v3
    rate_limit_per_second: int = 10  # our own cap on orders per second (the original design's default)
    paper_latency_us: int = 1000  # paper mode: order -> active at the (simulated) venue
    paper_maker_fee: str = "0.001"  # paper mode: fee rates (Binance's default 0.1 %)
    paper_taker_fee: str = "0.001"
    paper_queue_model: str = "trade_through"  # paper mode: trade_through | queue_position (core/matching.py)
    transport: str = "ws"  # sim/live orders: "ws" (the WebSocket API session) | "rest" (httpx keep-alive, rest_url);
    #                        the user-data stream is always on the WebSocket API
    on_shutdown: str = "cancel"  # sim/live: "cancel" our open orders when the system stops | "leave" them working


@dataclass(frozen=True, kw_only=True)
class IdleConfig:
    strategy: str = "backoff"  # "backoff" (shared cores) | "busy_spin" (dedicated core) | "futex" (sleep on md)
    spins: int = 100  # backoff/futex: empty polls with PAUSE before yielding
    yields: int = 50  # backoff/futex: sched_yield calls before sleeping
    min_sleep_us: int = 20  # backoff: first sleep
    max_sleep_us: int = 1000  # backoff: longest sleep; futex: longest wait (housekeeping still runs this often)

    def make(self, rings=()):
        """A fresh idle strategy object for a process's duty cycle.

        ``rings``: the consumer rings fed from other processes; the futex
        strategy sleeps on the publish cursor of the one external input (with
        several it behaves like backoff, see ``ringbuffers.idle``).
        """
        from ringbuffers.idle import make_idle

        if self.strategy == "busy_spin":
            return make_idle("busy_spin")
        if self.strategy == "futex":
            return make_idle("futex", rings=list(rings), spins=self.spins, yields=self.yields,
                             min_sleep_ns=self.min_sleep_us * 1000, max_sleep_ns=self.max_sleep_us * 1000)
        return make_idle("backoff", spins=self.spins, yields=self.yields,
                         min_sleep_ns=self.min_sleep_us * 1000, max_sleep_ns=self.max_sleep_us * 1000)


@dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    """One process of the ``placement``: the stages it hosts, where it runs and how it idles."""

    name: str  # process name (e.g. "feed", "engine", "simulator"); names its log lines and metrics
    stages: tuple[str, ...] = ()  # stages it runs, in pipeline order, in one duty cycle; () for the simulator
    cpus: tuple[int, ...]  # CPUs the process is pinned to (os.sched_setaffinity)
    idle: IdleConfig = field(default_factory=IdleConfig)
    rt_priority: int | None = None  # SCHED_FIFO priority 1..99, None = normal scheduling
    mlockall: bool = False  # lock the process's memory (needs CAP_IPC_LOCK or a high RLIMIT_MEMLOCK)
    modules: dict = field(default_factory=dict)  # stage -> module with make_stage(config, ctx) (default processes.<stage>)
    module: str = ""  # the simulator's module (run(config, ctx)); "" for stage processes
    batch: int = 256  # most records a stage takes from one input ring per duty cycle
    enabled: bool = True  # only the simulator may be disabled

    def stage_module(self, stage: str) -> str:
        return self.modules.get(stage, f"processes.{stage}")


@dataclass(frozen=True, kw_only=True)
class RingConfig:
    name: str  # md, book, signals, orders, reports
    capacity: int  # slots, power of two
    policy: str  # "block" | "overwrite" (overwrite only for md and book)


@dataclass(frozen=True, kw_only=True)
class SupervisorConfig:
    ready_timeout_s: float = 300.0  # every process must say ready within this (a cold numba compile on a loaded 2-CPU host included)
    heartbeat_interval_ms: int = 200  # how often workers send a heartbeat
    heartbeat_timeout_s: float = 5.0  # a ready worker silent this long is hung: killed and restarted
    max_restarts: int = 5  # more restarts than this within restart_window_s -> shutdown, exit 1
    restart_window_s: float = 60.0
    backoff_initial_ms: int = 100  # delay before the first restart of a worker
    backoff_max_ms: int = 5000  # delays double up to this
    drain_timeout_s: float = 2.0  # per ring, at shutdown: wait for consumers to catch up
    stop_timeout_s: float = 5.0  # per worker, at shutdown: then it is killed
    spare_worker: bool = True  # keep one pre-warmed spare process: a crashed worker is replaced in well under 1 s
    # the operator's unix socket (scripts/ctl.sh; mode 0600), an absolute path; "" = the default,
    # $XDG_RUNTIME_DIR/ringtrader-<instance>.sock or else /tmp/ringtrader-<instance>.sock (processes.supervisor.control)
    control_socket: str = ""
    # the live status table on stdout (processes.supervisor.statusview): "auto" = when stdout is a terminal, "on" =
    # always (plain frames off a terminal), "off" = never; while it is drawn the JSON log goes to stderr or logging.file
    status_table: str = "auto"


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    enabled: bool = True  # serve the Prometheus endpoint from the supervisor
    host: str = "127.0.0.1"  # bind address; loopback unless deliberately changed
    port: int = 9464  # TCP port; 0 = any free port (the chosen one is logged). In use -> warning, no metrics


@dataclass(frozen=True, kw_only=True)
class AlertsConfig:
    webhook_url: str | None = None  # POST every alert event here (processes/supervisor/alerts.py); None: log only
    format: str = "json"  # "json" (generic, with Slack's "text" and Discord's "content") | "text" ({"text": ...})
    timeout_s: float = 2.0  # per attempt
    retries: int = 3  # after the first attempt, on a connection error, a time-out or a 5xx


@dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    level: str = "INFO"
    stdout: bool = True  # JSON lines to stdout
    file: str | None = None  # also append JSON lines to this file


@dataclass(frozen=True, kw_only=True)
class SystemConfig:
    mode: str  # "sim" | "paper" | "live"
    instance: str  # names the shared-memory segments: ringtrader.<instance>.<ring>
    instruments: tuple[Instrument, ...]
    market_data: MarketDataConfig
    book: BookSettings = field(default_factory=BookSettings)  # the book worker's section (optional in files)
    signal: SignalConfig
    risk: RiskConfig
    execution: ExecutionConfig
    placement: dict  # process name -> ProcessConfig, in pipeline order of their first stage, simulator last
    rings: dict  # name -> RingConfig (every entry of RINGS)
    supervisor: SupervisorConfig
    metrics: MetricsConfig
    logging: LoggingConfig
    simulator: dict  # the simulator's own section, validated by the simulator (processes.simulator.config)
    source_path: str = ""  # the file this was loaded from
    alerts: AlertsConfig = field(default_factory=AlertsConfig)  # alert webhooks (optional section)
    venue: str = ""  # core.filters.VenueInfo JSON the supervisor resolved from exchangeInfo at start ("" = none)

    def process(self, name: str) -> ProcessConfig:
        return self.placement[name]

    def process_of(self, stage: str) -> ProcessConfig:
        """The process that hosts ``stage`` (or a hosted ring consumer: ``HOSTED_CONSUMERS``)."""
        stage = HOSTED_CONSUMERS.get(stage, stage)
        for p in self.placement.values():
            if stage in p.stages:
                return p
        raise KeyError(stage)

    @property
    def simulator_enabled(self) -> bool:
        p = self.placement.get(SIMULATOR)
        return self.mode in ("sim", "paper") and p is not None and p.enabled  # paper: fills local, market simulated

    def symbol_ids(self) -> dict[str, int]:
        return {i.symbol: i.id for i in self.instruments}


@dataclass(frozen=True)
class Secrets:
    """API credentials from the environment. ``repr`` never shows them."""

    api_key: str = field(default="", repr=False)
    api_secret: str = field(default="", repr=False)

    @property
    def present(self) -> bool:
        return bool(self.api_key and self.api_secret)


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _tname(v) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(v), type(v).__name__)


def _show(v) -> str:
    return json.dumps(v) if isinstance(v, (str, list, dict, bool)) or v is None else str(v)


class _Section:
    """A JSON object being validated: typed getters, then ``finish`` rejects unknown keys."""

    def __init__(self, data, path: str):
        if not isinstance(data, dict):
            raise ConfigError(path, f"must be an object, got {_tname(data)}")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def p(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default=_REQUIRED):
        self.used.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise ConfigError(self.p(key), "is required")
            return default
        return self.data[key]

    def int(self, key, default=_REQUIRED, *, lo=None, hi=None, nullable=False):
        v = self.raw(key, default)
        if v is None and nullable:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(self.p(key), f"must be an integer, got {_tname(v)} {_show(v)}")
        _range(self.p(key), v, lo, hi)
        return v

    def num(self, key, default=_REQUIRED, *, lo=None, hi=None, gt=None):
        v = self.raw(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(self.p(key), f"must be a number, got {_tname(v)} {_show(v)}")
        if gt is not None and not v > gt:
            raise ConfigError(self.p(key), f"must be > {gt}, got {_show(v)}")
        _range(self.p(key), v, lo, hi)
        return float(v)

    def bool(self, key, default=_REQUIRED):
        v = self.raw(key, default)
        if not isinstance(v, bool):
            raise ConfigError(self.p(key), f"must be true or false, got {_tname(v)} {_show(v)}")
        return v

    def str(self, key, default=_REQUIRED, *, choices=None, nullable=False, pattern=None):
        v = self.raw(key, default)
        if v is None and nullable:
            return None
        if not isinstance(v, str):
            raise ConfigError(self.p(key), f"must be a string, got {_tname(v)} {_show(v)}")
        if choices is not None and v not in choices:
            raise ConfigError(self.p(key), f"must be one of {', '.join(choices)}, got {_show(v)}")
        if pattern is not None and not pattern.match(v):
            raise ConfigError(self.p(key), f"is not valid: {_show(v)} (expected {pattern.pattern})")
        return v

    def fixed(self, key, default=_REQUIRED, *, positive=True):
        """A decimal (string or JSON number) as exact fixed point."""
        v = self.raw(key, default)
        return _fixed(self.p(key), v, positive=positive)

    def section(self, key, required=False) -> "_Section":
        v = self.raw(key, _REQUIRED if required else {})
        return _Section(v, self.p(key))

    def finish(self) -> None:
        for key in self.data:
            if key in self.used or key.startswith("_comment"):
                continue
            if key.lower() in _SECRET_KEYS:
                raise ConfigError(self.p(key), "must not be in a config file: secrets are read only from the "
                                               "environment (see execution.api_key_env / api_secret_env)")
            known = sorted(self.used)
            raise ConfigError(self.p(key), f"is not a known key (known here: {', '.join(known)})")


def _range(path, v, lo, hi):
    if lo is not None and v < lo:
        raise ConfigError(path, f"must be >= {lo}, got {_show(v)}" if lo != 1 else f"must be > 0, got {_show(v)}")
    if hi is not None and v > hi:
        raise ConfigError(path, f"must be <= {hi}, got {_show(v)}")


def _fixed(path, v, *, positive=True) -> int:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise ConfigError(path, f"must be a decimal string or number, got {_tname(v)} {_show(v)}")
    text = repr(v) if isinstance(v, float) else str(v)
    try:
        value = to_fixed(text, allow_negative=True)
    except FixedPointError as exc:
        raise ConfigError(path, f"is not an exact decimal: {_show(v)} ({exc})") from exc
    if positive and value <= 0:
        raise ConfigError(path, f"must be > 0, got {text}")
    return value


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def _instruments(raw) -> tuple[Instrument, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("instruments", f"must be a non-empty array, got {_tname(raw)}")
    out, seen = [], set()
    for i, item in enumerate(raw):
        s = _Section(item, f"instruments[{i}]")
        symbol = s.str("symbol", pattern=_SYMBOL_RE)
        if symbol in seen:
            raise ConfigError(s.p("symbol"), f"duplicate symbol {symbol}")
        seen.add(symbol)
        filters = s.str("filters", "config", choices=("config", "exchangeInfo"))
        if filters == "exchangeInfo":
            inst = Instrument(id=i, symbol=symbol, tick_size=0, lot_size=0, min_notional=0, from_exchange_info=True)
        else:
            inst = Instrument(id=i, symbol=symbol, tick_size=s.fixed("tick_size"), lot_size=s.fixed("lot_size"),
                              min_notional=s.fixed("min_notional", "0", positive=False), from_exchange_info=False)
        s.finish()
        out.append(inst)
    return tuple(out)


def _market_data(s: _Section) -> MarketDataConfig:
    d = MarketDataConfig()
    syn = s.section("synthetic")
    sd = SyntheticConfig()
    synthetic = SyntheticConfig(
        rate_per_s=syn.int("rate_per_s", sd.rate_per_s, lo=1, hi=10_000_000),
        seed=syn.int("seed", sd.seed, lo=0, hi=2**63 - 1),
        depth_levels=syn.int("depth_levels", sd.depth_levels, lo=1, hi=1000),
        start_price=syn.fixed("start_price", "100"),
        tick_size=syn.fixed("tick_size", "0.01"),
        lot_size=syn.fixed("lot_size", "0.00001"),
    )
    syn.finish()
    streams = s.raw("streams", list(d.streams))
    if not isinstance(streams, list) or not all(isinstance(x, str) and x for x in streams):
        raise ConfigError(s.p("streams"), f"must be an array of stream names, got {_show(streams)}")
    cfg = MarketDataConfig(
        source=s.str("source", d.source, choices=MD_SOURCES),
        ws_url=s.str("ws_url", d.ws_url),
        rest_url=s.str("rest_url", d.rest_url),
        streams=tuple(streams),
        snapshot_limit=s.int("snapshot_limit", d.snapshot_limit, lo=1, hi=5000),
        recording_dir=s.str("recording_dir", None, nullable=True),
        recording_rotate_mb=s.int("recording_rotate_mb", d.recording_rotate_mb, lo=1, hi=1 << 20),
        recording_rotate_s=s.num("recording_rotate_s", d.recording_rotate_s, gt=0),
        synthetic=synthetic,
    )
    s.finish()
    return cfg


def _book(s: _Section) -> BookSettings:
    d = BookSettings()
    ivs = s.raw("bar_intervals_ms", list(d.bar_intervals_ms))
    if not isinstance(ivs, list) or not ivs:
        raise ConfigError(s.p("bar_intervals_ms"), f"must be a non-empty array of milliseconds, got {_show(ivs)}")
    for j, iv in enumerate(ivs):
        # whole seconds: bars align to the epoch like Binance klines, and the kernels close them on that grid
        if isinstance(iv, bool) or not isinstance(iv, int) or iv < 1000 or iv % 1000:
            raise ConfigError(f"{s.p('bar_intervals_ms')}[{j}]", f"must be a whole number of seconds in ms "
                                                               f"(>= 1000, multiple of 1000), got {_show(iv)}")
    if len(set(ivs)) != len(ivs):
        raise ConfigError(s.p("bar_intervals_ms"), f"lists an interval twice: {_show(ivs)}")
    cfg = BookSettings(
        levels_capacity=s.int("levels_capacity", d.levels_capacity, lo=5000, hi=1 << 20),
        buffer_capacity=s.int("buffer_capacity", d.buffer_capacity, lo=1024, hi=1 << 22),
        bar_intervals_ms=tuple(ivs),
        bar_watermark_ms=s.int("bar_watermark_ms", d.bar_watermark_ms, lo=0, hi=60_000),
        emit_empty_bars=s.bool("emit_empty_bars", d.emit_empty_bars),
        depth_throttle_ms=s.num("depth_throttle_ms", d.depth_throttle_ms, hi=3_600_000),
    )
    s.finish()
    return cfg


def _signal(s: _Section) -> SignalConfig:
    features = s.raw("features", {})
    if not isinstance(features, dict):
        raise ConfigError(s.p("features"), f"must be an object, got {_tname(features)}")
    strategies = s.raw("strategies", [])
    if not isinstance(strategies, list) or not all(isinstance(x, dict) for x in strategies):
        raise ConfigError(s.p("strategies"), "must be an array of strategy objects")
    if len(strategies) > 16:
        raise ConfigError(s.p("strategies"), f"at most 16 strategies, got {len(strategies)}")
    cfg = SignalConfig(update_interval_ms=s.int("update_interval_ms", 1000, lo=0, hi=3_600_000),
                       max_staleness_ms=s.int("max_staleness_ms", 2000, lo=1, hi=3_600_000),
                       allow_pickle=s.bool("allow_pickle", False),
                       model_budget_us=s.num("model_budget_us", 200.0, gt=0, hi=1e7),
                       features=copy.deepcopy(features), strategies=tuple(copy.deepcopy(strategies)))
    s.finish()
    return cfg


def _risk(s: _Section) -> RiskConfig:
    d = RiskConfig(max_position_size=1, max_order_qty=1, max_order_notional=1, max_open_orders=1,
                   max_orders_per_s=1, max_daily_loss=1, price_band_pct=1.0)
    sizing = s.section("sizing")
    stops = s.section("stops")
    breaker = s.section("breaker")
    cfg = RiskConfig(
        max_position_size=s.fixed("max_position_size"),
        max_order_qty=s.fixed("max_order_qty"),
        max_order_notional=s.fixed("max_order_notional"),
        max_open_orders=s.int("max_open_orders", lo=1),
        max_orders_per_s=s.int("max_orders_per_s", lo=1),
        max_daily_loss=s.fixed("max_daily_loss"),
        price_band_pct=s.num("price_band_pct", 5.0, gt=0, hi=100),
        max_orders_per_10s=s.int("max_orders_per_10s", d.max_orders_per_10s, lo=1, hi=1024),
        max_symbol_notional=s.fixed("max_symbol_notional", "1000"),
        max_gross_notional=s.fixed("max_gross_notional", "2000"),
        max_open_positions=s.int("max_open_positions", d.max_open_positions, lo=1),
        max_staleness_ms=s.int("max_staleness_ms", d.max_staleness_ms, lo=1),
        max_clock_offset_ms=s.int("max_clock_offset_ms", d.max_clock_offset_ms, lo=0),
        max_slippage_bps=s.num("max_slippage_bps", d.max_slippage_bps, gt=0),
        impact_k=s.num("impact_k", d.impact_k, lo=0),
        pnl_method=s.str("pnl_method", d.pnl_method, choices=("fifo", "lifo", "average")),
        allow_short=s.bool("allow_short", d.allow_short),
        capital=s.fixed("capital", "10000"),
        sizing_mode=sizing.str("mode", d.sizing_mode, choices=("fixed_qty", "fixed_notional", "volatility")),
        sizing_qty=sizing.fixed("qty", "0.001"),
        sizing_notional=sizing.fixed("notional", "50"),
        sizing_risk_per_trade=sizing.fixed("risk_per_trade", "5"),
        sizing_atr_mult=sizing.num("atr_mult", d.sizing_atr_mult, gt=0),
        order_type=s.str("order_type", d.order_type, choices=("market", "limit_ioc", "limit_gtc")),
        limit_offset_bps=s.num("limit_offset_bps", d.limit_offset_bps, lo=0, hi=1000),
        stop_loss_pct=stops.num("stop_loss_pct", 0.0, lo=0, hi=100),
        take_profit_pct=stops.num("take_profit_pct", 0.0, lo=0, hi=1000),
        trailing_stop_pct=stops.num("trailing_stop_pct", 0.0, lo=0, hi=100),
        trailing_stop_abs=stops.fixed("trailing_stop_abs", "0", positive=False),
        max_drawdown_pct=breaker.num("max_drawdown_pct", 0.0, lo=0, hi=100),
        max_consecutive_rejects=breaker.int("max_consecutive_rejects", d.max_consecutive_rejects, lo=0),
        max_error_rate=breaker.num("max_error_rate", d.max_error_rate, lo=0, hi=1),
        feed_stale_ms=breaker.int("feed_stale_ms", d.feed_stale_ms, lo=0),
        book_invalid_ms=breaker.int("book_invalid_ms", d.book_invalid_ms, lo=0),
        latency_spike_us=breaker.int("latency_spike_us", d.latency_spike_us, lo=0),
        latency_spikes=breaker.int("latency_spikes", d.latency_spikes, lo=1),
    )
    if cfg.trailing_stop_abs < 0:
        raise ConfigError(stops.p("trailing_stop_abs"), f"must be >= 0, got {cfg.trailing_stop_abs / 10**8}")
    for sec in (sizing, stops, breaker):
        sec.finish()
    s.finish()
    return cfg


def _execution(s: _Section) -> ExecutionConfig:
    d = ExecutionConfig()
    env_re = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
    cfg = ExecutionConfig(
        rest_url=s.str("rest_url", d.rest_url),
        user_stream_url=s.str("user_stream_url", d.user_stream_url),
        order_timeout_ms=s.int("order_timeout_ms", d.order_timeout_ms, lo=1),
        recv_window_ms=s.int("recv_window_ms", d.recv_window_ms, lo=1, hi=60000),
        api_key_env=s.str("api_key_env", d.api_key_env, pattern=env_re),
        api_secret_env=s.str("api_secret_env", d.api_secret_env, pattern=env_re),
        journal_dir=s.str("journal_dir", d.journal_dir),
        ws_api_url=s.str("ws_api_url", None, nullable=True),
        rate_limit_per_second=s.int("rate_limit_per_second", d.rate_limit_per_second, lo=1, hi=10_000),
        paper_latency_us=s.int("paper_latency_us", d.paper_latency_us, lo=0, hi=10_000_000),
        paper_maker_fee=str(s.fixed("paper_maker_fee", d.paper_maker_fee, positive=False) / 10**8),
        paper_taker_fee=str(s.fixed("paper_taker_fee", d.paper_taker_fee, positive=False) / 10**8),
        paper_queue_model=s.str("paper_queue_model", d.paper_queue_model, choices=("trade_through",
                                                                                 "queue_position")),
        transport=s.str("transport", d.transport, choices=("ws", "rest")),
        on_shutdown=s.str("on_shutdown", d.on_shutdown, choices=("cancel", "leave")),
    )
    s.finish()
    return cfg


def _cpus(s: _Section, host_cpus) -> tuple[int, ...]:
    cpus = s.raw("cpus")
    if not isinstance(cpus, list) or not cpus:
        raise ConfigError(s.p("cpus"), f"must be a non-empty array of CPU ids, got {_show(cpus)}")
    for j, c in enumerate(cpus):
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ConfigError(f"{s.p('cpus')}[{j}]", f"must be a CPU id (integer >= 0), got {_show(c)}")
        if host_cpus is not None and c not in host_cpus:
            raise ConfigError(f"{s.p('cpus')}[{j}]", f"CPU {c} is not available on this host "
                                                     f"(allowed: {sorted(host_cpus)})")
    if len(set(cpus)) != len(cpus):
        raise ConfigError(s.p("cpus"), f"lists a CPU twice: {_show(cpus)}")
    return tuple(cpus)


def _idle(i: _Section) -> IdleConfig:
    di = IdleConfig()
    idle = IdleConfig(
        strategy=i.str("strategy", di.strategy, choices=IDLE_STRATEGIES),
        spins=i.int("spins", di.spins, lo=0),
        yields=i.int("yields", di.yields, lo=0),
        min_sleep_us=i.int("min_sleep_us", di.min_sleep_us, lo=1),
        max_sleep_us=i.int("max_sleep_us", di.max_sleep_us, lo=1),
    )
    if idle.max_sleep_us < idle.min_sleep_us:
        raise ConfigError(i.p("max_sleep_us"), f"must be >= min_sleep_us ({idle.min_sleep_us}), got {idle.max_sleep_us}")
    i.finish()
    return idle


def _process(name: str, s: _Section, host_cpus) -> ProcessConfig:
    """One ``placement`` entry hosting stages."""
    stages = s.raw("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError(s.p("stages"), f"must be a non-empty array of stage names ({', '.join(STAGES)}), "
                                         f"got {_show(stages)}")
    for j, st in enumerate(stages):
        if st not in STAGES:
            raise ConfigError(f"{s.p('stages')}[{j}]", f"must be one of {', '.join(STAGES)}, got {_show(st)}")
    if len(set(stages)) != len(stages):
        raise ConfigError(s.p("stages"), f"lists a stage twice: {_show(stages)}")
    for st in LOOP_STAGES:
        if st in stages and len(stages) > 1:
            raise ConfigError(s.p("stages"), f"stage {st} runs its own event loop (it sleeps on its socket) and "
                                             f"must be alone in its process, got {_show(stages)}")
    modules = s.raw("modules", {})
    if not isinstance(modules, dict):
        raise ConfigError(s.p("modules"), f"must be an object (stage -> module), got {_tname(modules)}")
    for st, mod in modules.items():
        if st not in stages:
            raise ConfigError(f"{s.p('modules')}.{st}", f"is not a stage of this process ({', '.join(stages)})")
        if not isinstance(mod, str) or not _MODULE_RE.match(mod):
            raise ConfigError(f"{s.p('modules')}.{st}", f"must be a module name, got {_show(mod)}")
    cfg = ProcessConfig(
        name=name,
        stages=tuple(sorted(stages, key=STAGES.index)),  # the duty cycle runs them in pipeline order
        cpus=_cpus(s, host_cpus),
        idle=_idle(s.section("idle")),
        rt_priority=s.int("rt_priority", None, lo=1, hi=99, nullable=True),
        mlockall=s.bool("mlockall", False),
        modules=dict(modules),
        batch=s.int("batch", 256, lo=1, hi=65536),
    )
    s.finish()
    return cfg


def _simulator_process(s: _Section, mode: str, host_cpus) -> ProcessConfig:
    cfg = ProcessConfig(
        name=SIMULATOR,
        cpus=_cpus(s, host_cpus),
        idle=_idle(s.section("idle")),
        rt_priority=s.int("rt_priority", None, lo=1, hi=99, nullable=True),
        mlockall=s.bool("mlockall", False),
        module=s.str("module", "processes.simulator", pattern=_MODULE_RE),
        enabled=s.bool("enabled", True),
    )
    s.finish()
    return cfg


_PROCESS_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def _placement(s: _Section, mode: str, host_cpus) -> dict:
    """``placement``: process name -> stages, CPUs, priority, idle. Every stage in exactly one process."""
    procs = []
    seen: dict[str, str] = {}
    for name in s.data:
        if name.startswith("_comment"):
            continue
        if not _PROCESS_NAME_RE.match(name):
            raise ConfigError(s.p(name), "is not a valid process name (lower-case letters, digits, _)")
        if name == SIMULATOR:
            continue
        p = _process(name, s.section(name, required=True), host_cpus)
        for st in p.stages:
            if st in seen:
                raise ConfigError(s.p(f"{name}.stages"), f"stage {st} is already placed in process {seen[st]}")
            seen[st] = name
        procs.append(p)
    missing = [st for st in STAGES if st not in seen]
    if missing:
        raise ConfigError(s.path, f"places no process for stage(s) {', '.join(missing)}: every stage needs one")
    procs.sort(key=lambda p: STAGES.index(p.stages[0]))
    out = {p.name: p for p in procs}
    if s.has(SIMULATOR):
        out[SIMULATOR] = _simulator_process(s.section(SIMULATOR), mode, host_cpus)
    else:  # only needed in sim mode; default placement: anywhere, normal priority
        out[SIMULATOR] = ProcessConfig(name=SIMULATOR, cpus=tuple(sorted(host_cpus or {0})),
                                       module="processes.simulator", enabled=(mode == "sim"))
    s.finish()
    return out


def _placement_section(top: _Section) -> _Section:
    if top.has("processes"):
        top.raw("processes")
        raise ConfigError("processes", "was replaced by \"placement\": process name -> {\"stages\": [...], "
                                       "\"cpus\": [...], \"idle\": {...}} (see config/system.json)")
    return top.section("placement", required=True)


def _rings(s: _Section) -> dict:
    out = {}
    for name in RINGS:
        r = s.section(name, required=True)
        cap = r.int("capacity", lo=2, hi=1 << 24)
        if cap & (cap - 1):
            raise ConfigError(r.p("capacity"), f"must be a power of two, got {cap}")
        policy = r.str("policy", "block", choices=RING_POLICIES)
        if name in ORDER_RINGS and policy != "block":
            raise ConfigError(r.p("policy"), f"must be block: ring {name} carries orders and never drops, got {policy!r}")
        r.finish()
        out[name] = RingConfig(name=name, capacity=cap, policy=policy)
    s.finish()
    return out


def _supervisor(s: _Section) -> SupervisorConfig:
    d = SupervisorConfig()
    cfg = SupervisorConfig(
        ready_timeout_s=s.num("ready_timeout_s", d.ready_timeout_s, gt=0),
        heartbeat_interval_ms=s.int("heartbeat_interval_ms", d.heartbeat_interval_ms, lo=1, hi=60000),
        heartbeat_timeout_s=s.num("heartbeat_timeout_s", d.heartbeat_timeout_s, gt=0),
        max_restarts=s.int("max_restarts", d.max_restarts, lo=0),
        restart_window_s=s.num("restart_window_s", d.restart_window_s, gt=0),
        backoff_initial_ms=s.int("backoff_initial_ms", d.backoff_initial_ms, lo=0),
        backoff_max_ms=s.int("backoff_max_ms", d.backoff_max_ms, lo=0),
        drain_timeout_s=s.num("drain_timeout_s", d.drain_timeout_s, gt=0),
        stop_timeout_s=s.num("stop_timeout_s", d.stop_timeout_s, gt=0),
        spare_worker=s.bool("spare_worker", d.spare_worker),
        control_socket=s.str("control_socket", d.control_socket),
        status_table=s.str("status_table", d.status_table, choices=("auto", "on", "off")),
    )
    if cfg.control_socket and not os.path.isabs(cfg.control_socket):
        raise ConfigError(s.p("control_socket"), f"must be an absolute path (or \"\" for the default), "
                                                 f"got {_show(cfg.control_socket)}")
    if len(os.fsencode(cfg.control_socket)) > _UNIX_PATH_MAX or "\0" in cfg.control_socket:
        raise ConfigError(s.p("control_socket"), f"must be at most {_UNIX_PATH_MAX} bytes without NUL (a unix "
                                                 f"socket path), got {_show(cfg.control_socket)}")
    if cfg.heartbeat_timeout_s * 1000 <= cfg.heartbeat_interval_ms:
        raise ConfigError(s.p("heartbeat_timeout_s"), f"must exceed heartbeat_interval_ms "
                                                      f"({cfg.heartbeat_interval_ms} ms), got {cfg.heartbeat_timeout_s}")
    s.finish()
    return cfg


def _metrics(s: _Section) -> MetricsConfig:
    cfg = MetricsConfig(enabled=s.bool("enabled", True), host=s.str("host", "127.0.0.1"),
                        port=s.int("port", 9464, lo=0, hi=65535))
    s.finish()
    return cfg


def _alerts(s: _Section) -> AlertsConfig:
    d = AlertsConfig()
    url = s.str("webhook_url", None, nullable=True)
    if url is not None and not re.match(r"^https?://[^\s/]+", url):
        raise ConfigError(s.p("webhook_url"), f"must be an http(s) URL, got {url!r}")
    cfg = AlertsConfig(webhook_url=url, format=s.str("format", d.format, choices=("json", "text")),
                       timeout_s=s.num("timeout_s", d.timeout_s, lo=0.1, hi=60.0),
                       retries=s.int("retries", d.retries, lo=0, hi=10))
    s.finish()
    return cfg


def _logging(s: _Section) -> LoggingConfig:
    cfg = LoggingConfig(level=s.str("level", "INFO", choices=LOG_LEVELS), stdout=s.bool("stdout", True),
                        file=s.str("file", None, nullable=True))
    s.finish()
    return cfg


def _simulator(raw):
    """The simulator section, kept as the raw mapping.

    The system does not depend on its test exchange: the simulator owns and
    validates its own keys (``processes.simulator.config.SimulatorConfig``);
    the supervisor has it do so before anything starts, in sim mode.
    """
    if not isinstance(raw, dict):
        raise ConfigError("simulator", f"must be an object, got {_tname(raw)}")
    return copy.deepcopy(raw)


# ---------------------------------------------------------------------------
# Environment overrides
# ---------------------------------------------------------------------------


def apply_env_overrides(data: dict, env) -> dict[str, str]:
    """Apply ``RINGTRADER__A__B=value`` overrides to ``data`` in place.

    Returns ``{key path: variable name}`` so errors can name the variable.
    """
    origins = {}
    for var in sorted(env):
        if not var.upper().startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in var[len(ENV_PREFIX):].split("__")]
        if not all(parts):
            raise ConfigError(var, "is not a valid override name (RINGTRADER__SECTION__KEY)")
        text = env[var]
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        node = data
        for j, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: j + 1]), f"is not an object, cannot apply ${var}")
            node = child
        node[parts[-1]] = value
        origins[".".join(parts)] = var
    return origins


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


def parse_config(data, *, host_cpus=None, source_path: str = "") -> SystemConfig:
    """Validate an already-parsed JSON document. ``host_cpus``: CPU ids allowed (None: don't check)."""
    top = _Section(data, "")
    mode = top.str("mode", choices=MODES)
    cfg = SystemConfig(
        mode=mode,
        instance=top.str("instance", "main", pattern=_INSTANCE_RE),
        instruments=_instruments(top.raw("instruments")),
        market_data=_market_data(top.section("market_data")),
        book=_book(top.section("book")),
        signal=_signal(top.section("signal")),
        risk=_risk(top.section("risk", required=True)),
        execution=_execution(top.section("execution")),
        placement=_placement(_placement_section(top), mode, host_cpus),
        rings=_rings(top.section("rings", required=True)),
        supervisor=_supervisor(top.section("supervisor")),
        metrics=_metrics(top.section("metrics")),
        alerts=_alerts(top.section("alerts")),
        logging=_logging(top.section("logging")),
        simulator=_simulator(top.raw("simulator", {})),
        source_path=source_path,
    )
    top.finish()
    return cfg


def online_cpus() -> set[int]:
    """CPU ids online on this host (``/sys/devices/system/cpu/online``, e.g. ``0-3,6``): a placement may pin
    to any of them, including cores isolated from the scheduler (``isolcpus``) that this process's own
    affinity leaves out. Falls back to this process's affinity where sysfs is unreadable."""
    try:
        text = Path("/sys/devices/system/cpu/online").read_text().strip()
        out: set[int] = set()
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
        if out:
            return out
    except (OSError, ValueError):
        pass
    return set(os.sched_getaffinity(0))


def load_config(path, *, env=None, host_cpus="auto") -> SystemConfig:
    """Load, override from the environment, and validate a config file.

    ``env`` defaults to ``os.environ``. ``host_cpus="auto"`` checks CPU ids
    against the host's online CPUs (``online_cpus``: not this process's affinity, which excludes
    ``isolcpus`` cores and a systemd unit's ``CPUAffinity=``); pass ``None`` to skip (e.g. to lint a
    config meant for another host). Raises ``ConfigError``.
    """
    env = os.environ if env is None else env
    if host_cpus == "auto":
        host_cpus = online_cpus()
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError as exc:
        raise ConfigError("", f"config file not found: {p}") from exc
    except OSError as exc:
        raise ConfigError("", f"config file {p} cannot be read: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("", f"config file {p} is not valid JSON: {exc.msg} at line {exc.lineno} "
                              f"column {exc.colno}") from exc
    if not isinstance(data, dict):
        raise ConfigError("", f"config file {p} must hold a JSON object, got {_tname(data)}")
    origins = apply_env_overrides(data, env)
    try:
        cfg = parse_config(data, host_cpus=host_cpus, source_path=str(p.resolve()))
    except ConfigError as exc:
        var = _origin_of(exc.path, origins)
        if var:
            raise ConfigError(f"{exc.path} (from ${var})", exc.problem) from exc
        raise
    if cfg.mode == "live":
        secrets = load_secrets(cfg, env)
        if not secrets.present:
            raise ConfigError("execution.api_key_env", f"mode live needs ${cfg.execution.api_key_env} and "
                                                       f"${cfg.execution.api_secret_env} set in the environment")
    return cfg


def _origin_of(path: str, origins: dict) -> str | None:
    base = re.sub(r"\[\d+\]", "", path)
    while base:
        if base in origins:
            return origins[base]
        base = base.rpartition(".")[0]
    return None


def load_secrets(cfg: SystemConfig, env=None) -> Secrets:
    """API credentials from the environment variables the config names (empty when unset)."""
    env = os.environ if env is None else env
    return Secrets(api_key=env.get(cfg.execution.api_key_env, ""),
                   api_secret=env.get(cfg.execution.api_secret_env, ""))


def _main(argv=None) -> int:
    """``python -m core.config PATH``: validate a config file (exit 0 ok, 2 invalid)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=_main.__doc__)
    ap.add_argument("path")
    ap.add_argument("--any-host", action="store_true", help="do not check CPU ids against this host")
    args = ap.parse_args(argv)
    try:
        load_config(args.path, host_cpus=None if args.any_host else "auto")
    except ConfigError as exc:
        sys.stderr.write(f"config error: {exc}\n")
        return 2
    sys.stdout.write(f"{args.path}: ok\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
