"""Simulated accounts: their config, and a ledger of balances (free / locked per asset) that conserves every unit.

Config (``simulator.accounts``, a list; every key of an entry but ``name`` optional)::

    "accounts": [
      {"name": "main", "api_key_env": "BINANCE_SIM_API_KEY", "api_secret_env": "BINANCE_SIM_API_SECRET",
       "key_type": "hmac", "balances": {"USDT": "100000", "BTC": "1"}},
      {"name": "maker", "api_key_env": "SIM_MAKER_KEY", "api_secret_env": "SIM_MAKER_PUBKEY",
       "key_type": "ed25519", "balances": {"USDT": "5000"}}
    ]

The key material is never in the file: ``api_key_env`` names the variable that
holds the API key, ``api_secret_env`` the one that holds

* ``hmac``: the HMAC-SHA256 secret key (what Binance shows once when the key is made);
* ``ed25519``: the account's Ed25519 PUBLIC key in PEM (``-----BEGIN PUBLIC
  KEY-----``; or a path to a PEM file). That is what one registers with Binance;
  the private key stays with the client, so the simulator never holds a secret
  that signs for an Ed25519 account.

``auth.load_keys`` reads them at start. Without an ``accounts`` key the
simulator has one account, ``main`` (``DEFAULT_ACCOUNT``), whose variables may
be unset: the market side then runs and every signed request is refused with
-2015 (a configured account whose variable is unset is a start-up error).

Fees (``simulator.fees``)::

    "fees": {"maker": "0.001", "taker": "0.001"}                       # Binance's default 0.1 %
    "fees": {"maker": "0.00075", "taker": "0.00075", "asset": "BNB",
             "asset_prices": {"USDT": "600", "BTC": "0.01"}}         # paid in BNB when it covers the fee

Rates are decimal fractions (``"0.001"`` = 0.1 %), parsed to parts per 1e8 (the
matching core's unit). With ``asset`` a fill's commission is computed in quote
terms and converted at ``asset_prices[quote]`` (price of one fee-asset unit in
that quote), rounded up; an account without enough free fee asset pays the
native commission instead (Binance: base asset on a buy, quote on a sell).

Ledger
------
Amounts are Python ints in 1e-8 units (``core.fixedpoint``); nothing is ever
a float. Every movement is between two named places, so per asset::

    sum over accounts (free + locked) + fees collected + external == initial + deposits

``external`` is the public book, the counterparty of every fill (what our
buys took out of it is negative, what our sells paid in positive).
``check_conservation`` asserts it; tests drive random order sequences through
it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from core.errors import ConfigError, FixedPointError
from core.fixedpoint import from_fixed, to_fixed
from core.records import FIXED_SCALE

KEY_TYPES = ("hmac", "ed25519")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ASSET_RE = re.compile(r"^[A-Z0-9]{1,20}$")
ACCOUNT_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

DEFAULT_KEY_ENV = "BINANCE_SIM_API_KEY"
DEFAULT_SECRET_ENV = "BINANCE_SIM_API_SECRET"
DEFAULT_BALANCES = {"USDT": "100000", "BTC": "1", "ETH": "10"}  # enough for the default BTCUSDT/ETHUSDT
DEFAULT_FEE_RATE = "0.001"  # Binance's standard spot rate, maker and taker


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------
def _check_keys(d: Any, allowed: set[str], path: str) -> None:
    if not isinstance(d, Mapping):
        raise ConfigError(path, f"must be an object, got {type(d).__name__}")
    for key in d:
        if not key.startswith("_comment") and key not in allowed:
            raise ConfigError(f"{path}.{key}", f"is not a known key (known: {', '.join(sorted(allowed))})")


def _amount(v: Any, path: str, *, positive: bool = False) -> int:
    if not isinstance(v, str):
        raise ConfigError(path, f"must be a decimal string, got {v!r}")
    try:
        x = to_fixed(v)
    except FixedPointError as exc:
        raise ConfigError(path, str(exc)) from exc
    if positive and x <= 0:
        raise ConfigError(path, f"must be > 0, got {v!r}")
    return x


@dataclass(frozen=True, kw_only=True)
class AccountConfig:
    """One simulated account: its name, where its key material is, and its starting balances."""

    name: str = "main"  # shown in logs and /sim/stats; listeners subscribe by it
    api_key_env: str = DEFAULT_KEY_ENV  # environment variable holding the API key
    api_secret_env: str = DEFAULT_SECRET_ENV  # HMAC secret, or Ed25519 public key PEM (or a path to one)
    key_type: str = "hmac"  # "hmac" | "ed25519"
    balances: Mapping[str, int] = field(default_factory=dict)  # asset -> starting free amount, fixed point
    required: bool = True  # False only for the implicit default account: unset variables disable it

    KEYS = frozenset({"name", "api_key_env", "api_secret_env", "key_type", "balances"})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str) -> "AccountConfig":
        _check_keys(d, set(cls.KEYS), path)
        name = d.get("name")
        if not isinstance(name, str) or not ACCOUNT_NAME_RE.match(name):
            raise ConfigError(f"{path}.name", f"must match {ACCOUNT_NAME_RE.pattern}, got {name!r}")
        envs = {}
        for key, default in (("api_key_env", DEFAULT_KEY_ENV), ("api_secret_env", DEFAULT_SECRET_ENV)):
            v = d.get(key, default)
            if not isinstance(v, str) or not ENV_NAME_RE.match(v):
                raise ConfigError(f"{path}.{key}", f"must be an environment variable name, got {v!r}")
            envs[key] = v
        key_type = d.get("key_type", "hmac")
        if key_type not in KEY_TYPES:
            raise ConfigError(f"{path}.key_type", f"must be one of {list(KEY_TYPES)}, got {key_type!r}")
        return cls(name=name, key_type=key_type, balances=parse_balances(d.get("balances", {}), f"{path}.balances"),
                   **envs)  # fmt: skip


def parse_balances(raw: Any, path: str) -> dict[str, int]:
    _check_keys(raw, set(raw) if isinstance(raw, Mapping) else set(), path)
    out = {}
    for asset, v in raw.items():
        if not isinstance(asset, str) or not ASSET_RE.match(asset):
            raise ConfigError(f"{path}.{asset}", f"asset must match {ASSET_RE.pattern}")
        out[asset] = _amount(v, f"{path}.{asset}")
    return out


def default_account() -> AccountConfig:
    return AccountConfig(balances={a: to_fixed(v) for a, v in DEFAULT_BALANCES.items()}, required=False)


def parse_accounts(raw: Any, path: str = "simulator.accounts") -> tuple[AccountConfig, ...]:
    """The ``accounts`` list; names, API-key variables unique. ``None`` -> ``()`` (the default account applies)."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(path, f"must be a non-empty list of accounts, got {raw!r}")
    out = [AccountConfig.from_dict(a, f"{path}[{i}]") for i, a in enumerate(raw)]
    for attr in ("name", "api_key_env"):
        seen: dict[str, int] = {}
        for i, a in enumerate(out):
            v = getattr(a, attr)
            if v in seen:
                raise ConfigError(f"{path}[{i}].{attr}", f"{v!r} is already used by {path}[{seen[v]}]")
            seen[v] = i
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class FeeConfig:
    """Commission: maker/taker rates in parts per 1e8, an optional fee asset with its conversion prices."""

    maker: int = to_fixed(DEFAULT_FEE_RATE)  # parts per 1e8 of the fill (100_000 = 0.1 %)
    taker: int = to_fixed(DEFAULT_FEE_RATE)
    asset: str = ""  # "" = native (base on buys, quote on sells); e.g. "BNB"
    asset_prices: Mapping[str, int] = field(default_factory=dict)  # quote asset -> price of 1 fee-asset unit

    KEYS = frozenset({"maker", "taker", "asset", "asset_prices"})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, path: str = "simulator.fees") -> "FeeConfig":
        d = {} if d is None else d
        _check_keys(d, set(cls.KEYS), path)
        rates = {}
        for key in ("maker", "taker"):
            r = _amount(d.get(key, DEFAULT_FEE_RATE), f"{path}.{key}")
            if r > FIXED_SCALE:
                raise ConfigError(f"{path}.{key}", f"must be <= 1 (a fraction of the fill), got {d[key]!r}")
            rates[key] = r
        asset = d.get("asset", "")
        if asset and (not isinstance(asset, str) or not ASSET_RE.match(asset)):
            raise ConfigError(f"{path}.asset", f"must match {ASSET_RE.pattern}, got {asset!r}")
        prices_raw = d.get("asset_prices", {})
        _check_keys(prices_raw, set(prices_raw) if isinstance(prices_raw, Mapping) else set(), f"{path}.asset_prices")
        prices = {q: _amount(v, f"{path}.asset_prices.{q}", positive=True) for q, v in prices_raw.items()}
        if asset and not prices:
            raise ConfigError(f"{path}.asset_prices", f"must give the price of {asset} in each quote asset")
        return cls(maker=rates["maker"], taker=rates["taker"], asset=asset or "", asset_prices=prices)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"maker": from_fixed(self.maker), "taker": from_fixed(self.taker)}
        if self.asset:
            d["asset"] = self.asset
            d["asset_prices"] = {q: from_fixed(p) for q, p in self.asset_prices.items()}
        return d


# ---------------------------------------------------------------------------
# Ledger
# ---------------------------------------------------------------------------
class Ledger:
    """Balances of every account, fees collected and the public book's side of every fill.

    Primitives move an exact amount between two places and record which
    (account, asset) changed, so the caller can publish
    ``outboundAccountPosition`` for exactly those. They return False instead of
    going negative (a caller's bug then shows as a refused move, never as a
    silent overdraft); ``check_conservation`` proves nothing leaked.
    """

    def __init__(self, accounts: Iterable[AccountConfig]):
        self.free: dict[str, dict[str, int]] = {}
        self.locked: dict[str, dict[str, int]] = {}
        self.initial: dict[str, int] = {}  # asset -> starting total of all accounts, plus deposits
        self.fees: dict[str, int] = {}  # asset -> commission collected
        self.external: dict[str, int] = {}  # asset -> net amount the public book gained from our fills
        self.update_ms: dict[str, int] = {}  # account -> time of its last balance change (ms)
        self.changed: dict[str, set[str]] = {}  # account -> assets changed since take_changes
        for a in accounts:
            self.free[a.name] = dict(a.balances)
            self.locked[a.name] = {k: 0 for k in a.balances}
            self.update_ms[a.name] = 0
            self.changed[a.name] = set()
            for asset, v in a.balances.items():
                self.initial[asset] = self.initial.get(asset, 0) + v

    # -- reads ----------------------------------------------------------------
    def balance(self, account: str, asset: str) -> tuple[int, int]:
        """(free, locked) of one asset."""
        return self.free[account].get(asset, 0), self.locked[account].get(asset, 0)

    def assets(self, account: str) -> list[str]:
        return sorted(self.free[account].keys() | self.locked[account].keys())

    def take_changes(self, account: str) -> list[str]:
        """Assets of ``account`` changed since the last call (sorted), and forget them."""
        ch = self.changed[account]
        if not ch:
            return []
        out = sorted(ch)
        ch.clear()
        return out

    # -- moves ----------------------------------------------------------------
    def _touch(self, account: str, asset: str, now_ms: int) -> None:
        self.changed[account].add(asset)
        self.update_ms[account] = now_ms
        self.free[account].setdefault(asset, 0)
        self.locked[account].setdefault(asset, 0)

    def lock(self, account: str, asset: str, amount: int, now_ms: int) -> bool:
        """free -> locked; False (nothing moves) if free < amount."""
        free = self.free[account].get(asset, 0)
        if amount < 0 or free < amount:
            return False
        if amount:
            self._touch(account, asset, now_ms)
            self.free[account][asset] = free - amount
            self.locked[account][asset] += amount
        return True

    def release(self, account: str, asset: str, amount: int, now_ms: int) -> bool:
        """locked -> free (a cancel, an expiry, a fill at a better price than locked for)."""
        locked = self.locked[account].get(asset, 0)
        if amount < 0 or locked < amount:
            return False
        if amount:
            self._touch(account, asset, now_ms)
            self.locked[account][asset] = locked - amount
            self.free[account][asset] += amount
        return True

    def pay_locked(self, account: str, asset: str, amount: int, now_ms: int) -> bool:
        """locked -> the public book (what a fill costs)."""
        locked = self.locked[account].get(asset, 0)
        if amount < 0 or locked < amount:
            return False
        if amount:
            self._touch(account, asset, now_ms)
            self.locked[account][asset] = locked - amount
            self.external[asset] = self.external.get(asset, 0) + amount
        return True

    def receive(self, account: str, asset: str, amount: int, now_ms: int) -> None:
        """the public book -> free (what a fill brings)."""
        if amount:
            self._touch(account, asset, now_ms)
            self.free[account][asset] += amount
            self.external[asset] = self.external.get(asset, 0) - amount

    def charge_fee(self, account: str, asset: str, amount: int, now_ms: int) -> bool:
        """free -> fees collected; False if free < amount."""
        free = self.free[account].get(asset, 0)
        if amount < 0 or free < amount:
            return False
        if amount:
            self._touch(account, asset, now_ms)
            self.free[account][asset] = free - amount
            self.fees[asset] = self.fees.get(asset, 0) + amount
        return True

    def adjust(self, account: str, asset: str, delta: int, now_ms: int) -> bool:
        """A deposit (> 0) or withdrawal (< 0) of free balance from outside the simulation."""
        free = self.free[account].get(asset, 0)
        if free + delta < 0:
            return False
        self._touch(account, asset, now_ms)
        self.free[account][asset] = free + delta
        self.initial[asset] = self.initial.get(asset, 0) + delta
        return True

    # -- invariants -------------------------------------------------------------
    def totals(self) -> dict[str, dict[str, int]]:
        """Per asset: accounts (free + locked), fees, external, initial."""
        assets = set(self.initial) | set(self.fees) | set(self.external)
        for name in self.free:
            assets |= self.free[name].keys() | self.locked[name].keys()
        out = {}
        for a in sorted(assets):
            held = sum(self.free[n].get(a, 0) + self.locked[n].get(a, 0) for n in self.free)
            out[a] = {"accounts": held, "fees": self.fees.get(a, 0), "external": self.external.get(a, 0),
                      "initial": self.initial.get(a, 0)}  # fmt: skip
        return out

    def conservation_errors(self) -> list[str]:
        """Assets whose accounts + fees + external != initial (empty when the ledger is sound)."""
        bad = []
        for a, t in self.totals().items():
            if t["accounts"] + t["fees"] + t["external"] != t["initial"]:
                bad.append(f"{a}: accounts {t['accounts']} + fees {t['fees']} + external {t['external']} "
                           f"!= initial {t['initial']}")  # fmt: skip
        for name in self.free:
            for a in self.free[name]:
                if self.free[name][a] < 0 or self.locked[name].get(a, 0) < 0:
                    bad.append(f"{name}.{a}: negative balance")
        return bad
