"""SIGNED requests as Binance checks them: API keys, HMAC-SHA256 / Ed25519 signatures, timestamp windows.

Transport-independent: the REST server (``server.py``) and the WS API hand
in what they received and get back the account name, or a ``BinanceError``
carrying Binance's code, message and HTTP status.

What is signed
--------------
* REST (``parse_rest``): the query string concatenated with the request
  body, no separator, exactly as received (still percent-encoded), without
  the ``signature=...`` component. The documented vectors
  (``tests/processes/test_simulator_orders.py``) pin it, the "mixed"
  query+body one included.
* WS API (``ws_payload``): every param but ``signature``, ``apiKey``
  included, sorted by name, ``k=v`` joined by ``&``, raw UTF-8 (no
  percent-encoding); booleans as ``true``/``false``.

Signatures: HMAC hex (case-insensitive) or Ed25519 base64 (case-sensitive),
by the key's type. The order of checks: API key (-2014 missing/malformed,
-2015 unknown, HTTP 401), ``timestamp`` / ``recvWindow`` (-1102 malformed,
-1021 outside the window, HTTP 400), signature (-1102 missing, -1022 wrong,
HTTP 400).

Time: ``timestamp`` may be ms or µs (> 1e14 is read as µs), ``recvWindow``
ms with up to 3 decimals (default 5000, max 60000). Rejected when
``timestamp >= server + 1000 ms`` ("ahead") or ``server - timestamp >
recvWindow`` ("outside"); also before 2017-01-01. The server clock is
injected (``clock_us``) so a fault can skew it.

WS API reuse::

    auth = Authenticator(keys, clock_us)
    account = auth.ws(params)                    # per-request signature (HMAC or Ed25519)
    account = auth.ws_logon(params)              # session.logon: Ed25519 keys only
    auth.check_timestamp(params)                 # logged-on requests still carry a timestamp
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping
from urllib.parse import unquote_plus

from core.errors import ConfigError, VenueError
from processes.simulator.accounts import AccountConfig

log = logging.getLogger("ringtrader.simulator.auth")

API_KEY_RE = re.compile(r"^[A-Za-z0-9]{1,128}$")  # Binance keys are 64 alphanumerics; we accept 1..128
RECV_WINDOW_DEFAULT_US = 5_000_000
RECV_WINDOW_MAX_MS = 60_000
AHEAD_LIMIT_US = 1_000_000  # a timestamp this far ahead of the server is rejected
EARLIEST_TS_MS = 1_483_228_800_000  # 2017-01-01T00:00:00Z: older timestamps are rejected
US_THRESHOLD = 10**14  # a timestamp above this is in microseconds (ms stay below it until year 5138)

# HTTP status Binance answers an error code with (anything else: 400)
STATUS_OF_CODE = {-2014: 401, -2015: 401, -1015: 429, -1003: 429}


class BinanceError(VenueError):
    """A Binance error answer: ``{"code": code, "msg": msg}`` with HTTP ``status`` (and extra headers)."""

    def __init__(self, code: int, msg: str, status: int | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(STATUS_OF_CODE.get(code, 400) if status is None else status, code, msg)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg}


# Binance's messages (errors.md), as functions where they take a parameter name
MSG_KEY_FORMAT = "API-key format invalid."
MSG_KEY_REJECTED = "Invalid API-key, IP, or permissions for action."
MSG_TS_OUTSIDE = "Timestamp for this request is outside of the recvWindow."
MSG_TS_AHEAD = "Timestamp for this request was 1000ms ahead of the server's time."
MSG_BAD_SIGNATURE = "Signature for this request is not valid."
MSG_DUPLICATE_PARAM = "Duplicate values for a parameter detected."


def err_mandatory(name: str) -> BinanceError:
    return BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def err_illegal(name: str, legal: str) -> BinanceError:
    return BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '{legal}'.")


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Credential:
    """One account's key: the API key and what verifies its signatures. ``repr`` shows neither."""

    account: str
    key_type: str  # "hmac" | "ed25519"
    api_key: str = field(repr=False)
    _hmac: Any = field(default=None, repr=False)  # hmac object keyed with the secret (copied per request)
    _public: Any = field(default=None, repr=False)  # Ed25519PublicKey

    def verify(self, payload: bytes, signature: str) -> bool:
        """True if ``signature`` signs ``payload`` with this key (hex HMAC any case; base64 Ed25519)."""
        if self.key_type == "hmac":
            mac = self._hmac.copy()
            mac.update(payload)
            return hmac.compare_digest(mac.hexdigest(), signature.lower())
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return False
        from cryptography.exceptions import InvalidSignature

        try:
            self._public.verify(raw, payload)
        except InvalidSignature:
            return False
        return True


def hmac_credential(account: str, api_key: str, secret: str) -> Credential:
    return Credential(account, "hmac", api_key, _hmac=hmac.new(secret.encode(), digestmod=hashlib.sha256))


def ed25519_credential(account: str, api_key: str, public_pem: bytes) -> Credential:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(public_pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"not an Ed25519 public key but {type(key).__name__}")
    return Credential(account, "ed25519", api_key, _public=key)


class KeyStore:
    """API key -> Credential."""

    def __init__(self, creds: Iterable[Credential] = ()):
        self._by_key: dict[str, Credential] = {}
        for c in creds:
            self.add(c)

    def add(self, cred: Credential) -> None:
        if cred.api_key in self._by_key:
            raise ConfigError("simulator.accounts", f"accounts {self._by_key[cred.api_key].account!r} and "
                                                    f"{cred.account!r} have the same API key")  # fmt: skip
        self._by_key[cred.api_key] = cred

    def __len__(self) -> int:
        return len(self._by_key)

    def lookup(self, api_key: str | None) -> Credential:
        """The credential of ``api_key``; -2014 if missing or malformed, -2015 if unknown (HTTP 401)."""
        if not api_key or not API_KEY_RE.match(api_key):
            raise BinanceError(-2014, MSG_KEY_FORMAT)
        cred = self._by_key.get(api_key)
        if cred is None:
            raise BinanceError(-2015, MSG_KEY_REJECTED)
        return cred

    @property
    def accounts(self) -> list[str]:
        return [c.account for c in self._by_key.values()]


def load_keys(accounts: Iterable[AccountConfig], environ: Mapping[str, str] | None = None,
              path: str = "simulator.accounts") -> tuple[KeyStore, list[str]]:  # fmt: skip
    """Read every account's key material from the environment.

    Returns the store and the names of accounts left without a key (only the
    implicit default account may be; its variables unset means the market
    side runs and signed requests get -2015). A configured account with a
    variable unset, a malformed key or an unreadable Ed25519 PEM is a
    ``ConfigError`` naming the account and the VARIABLE (never its value).
    """
    env = os.environ if environ is None else environ
    store = KeyStore()
    without: list[str] = []
    for i, acc in enumerate(accounts):
        p = f"{path}[{i}]"
        key, secret = env.get(acc.api_key_env, ""), env.get(acc.api_secret_env, "")
        if not key or not secret:
            missing = acc.api_key_env if not key else acc.api_secret_env
            if not acc.required:
                log.warning("account %r: environment variable %s is not set: signed requests will be refused "
                            "(-2015)", acc.name, missing)  # fmt: skip
                without.append(acc.name)
                continue
            raise ConfigError(f"{p}.{'api_key_env' if not key else 'api_secret_env'}",
                              f"environment variable {missing} is not set (account {acc.name!r})")  # fmt: skip
        if not API_KEY_RE.match(key):
            raise ConfigError(f"{p}.api_key_env", f"the API key in {acc.api_key_env} must match "
                                                  f"{API_KEY_RE.pattern} (account {acc.name!r})")  # fmt: skip
        if acc.key_type == "hmac":
            store.add(hmac_credential(acc.name, key, secret))
        else:
            pem = secret.encode()
            if not secret.lstrip().startswith("-----BEGIN"):
                try:
                    with open(secret, "rb") as fh:
                        pem = fh.read()
                except OSError as exc:
                    raise ConfigError(f"{p}.api_secret_env", f"{acc.api_secret_env} holds neither a PEM public key "
                                                             f"nor a readable file path: {exc.strerror}") from exc
            from cryptography.exceptions import UnsupportedAlgorithm

            try:
                store.add(ed25519_credential(acc.name, key, pem))
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                raise ConfigError(f"{p}.api_secret_env", f"{acc.api_secret_env}: not an Ed25519 public key in PEM "
                                                         f"({type(exc).__name__})") from exc
        log.info("account %r: %s key from %s", acc.name, acc.key_type, acc.api_key_env)
    return store, without


# ---------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RestRequest:
    """A REST request's params (query string wins over body), the signed payload, the signature."""

    params: dict[str, str]
    payload: bytes  # query + body as received, the signature component removed
    signature: str | None


def _split(raw: str, params: dict[str, str], seen: set[str]) -> tuple[list[str], str | None]:
    kept: list[str] = []
    sig = None
    local: set[str] = set()
    for part in raw.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        name = unquote_plus(k)
        if name in local:
            raise BinanceError(-1101, MSG_DUPLICATE_PARAM)
        local.add(name)
        if name == "signature":
            sig = unquote_plus(v)
            continue
        kept.append(part)
        if name not in seen:  # the query string is parsed first and wins
            params[name] = unquote_plus(v)
    seen |= local
    return kept, sig


def parse_rest(raw_query: str, raw_body: str) -> RestRequest:
    """Params and signed payload of a REST request (``raw_query`` without ``?``, still percent-encoded)."""
    params: dict[str, str] = {}
    seen: set[str] = set()
    q_parts, q_sig = _split(raw_query, params, seen)
    b_parts, b_sig = _split(raw_body, params, seen)
    sig = q_sig if q_sig is not None else b_sig
    if q_sig is not None and b_sig is not None:
        raise BinanceError(-1101, MSG_DUPLICATE_PARAM)
    # the signed text is what the client sent; dropping "&signature=..." keeps the other separators as sent
    query = raw_query if q_sig is None else "&".join(q_parts)
    body = raw_body if b_sig is None else "&".join(b_parts)
    return RestRequest(params, (query + body).encode(), sig)


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def ws_payload(params: Mapping[str, Any]) -> bytes:
    """The WS API's signed text: params but ``signature`` sorted by name, ``k=v&...``, raw UTF-8."""
    return "&".join(f"{k}={_text(params[k])}" for k in sorted(params) if k != "signature").encode("utf-8")


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------
def _timestamp_us(params: Mapping[str, Any]) -> int:
    raw = params.get("timestamp")
    text = _text(raw) if raw is not None else ""
    if not text.isdigit() or len(text) > 20:
        raise err_mandatory("timestamp")
    ts = int(text)
    return ts if ts > US_THRESHOLD else ts * 1000


def _recv_window_us(params: Mapping[str, Any]) -> int:
    raw = params.get("recvWindow")
    if raw is None:
        return RECV_WINDOW_DEFAULT_US
    text = _text(raw)
    whole, _, frac = text.partition(".")
    if not whole.isdigit() or (frac and (not frac.isdigit() or len(frac) > 3)):
        raise err_illegal("recvWindow", "^[0-9]{1,20}(\\.[0-9]{1,3})?$")
    try:
        rw = Decimal(text)
    except InvalidOperation as exc:
        raise err_mandatory("recvWindow") from exc
    if rw > RECV_WINDOW_MAX_MS:
        raise BinanceError(-1102, f"'recvWindow' contains unexpected value. Cannot be greater than "
                                  f"'{RECV_WINDOW_MAX_MS}'.")  # fmt: skip
    return int(rw * 1000)


class Authenticator:
    """Checks keys, time windows and signatures against one KeyStore and one (injectable) server clock."""

    def __init__(self, keys: KeyStore, clock_us):
        self.keys = keys
        self.clock_us = clock_us
        self.stats = {"ok": 0, "bad_key": 0, "bad_time": 0, "bad_signature": 0}

    def check_timestamp(self, params: Mapping[str, Any]) -> None:
        """-1102 for a malformed timestamp/recvWindow, -1021 outside the window."""
        ts = _timestamp_us(params)
        rw = _recv_window_us(params)
        now = self.clock_us()
        if ts >= now + AHEAD_LIMIT_US:
            self.stats["bad_time"] += 1
            raise BinanceError(-1021, MSG_TS_AHEAD)
        if now - ts > rw or ts < EARLIEST_TS_MS * 1000:
            self.stats["bad_time"] += 1
            raise BinanceError(-1021, MSG_TS_OUTSIDE)

    def _verify(self, cred: Credential, payload: bytes, signature: str | None) -> str:
        if not signature:
            raise err_mandatory("signature")
        if not cred.verify(payload, signature):
            self.stats["bad_signature"] += 1
            raise BinanceError(-1022, MSG_BAD_SIGNATURE)
        self.stats["ok"] += 1
        return cred.account

    def _lookup(self, api_key: str | None) -> Credential:
        try:
            return self.keys.lookup(api_key)
        except BinanceError:
            self.stats["bad_key"] += 1
            raise

    def rest(self, api_key: str | None, req: RestRequest) -> str:
        """The account a REST request (``X-MBX-APIKEY`` header + ``parse_rest`` result) acts for."""
        cred = self._lookup(api_key)
        self.check_timestamp(req.params)
        return self._verify(cred, req.payload, req.signature)

    def ws(self, params: Mapping[str, Any]) -> str:
        """The account a WS API request signed with ``apiKey``/``timestamp``/``signature`` in params acts for."""
        key = params.get("apiKey")
        cred = self._lookup(key if isinstance(key, str) else None)
        self.check_timestamp(params)
        sig = params.get("signature")
        return self._verify(cred, ws_payload(params), sig if isinstance(sig, str) else None)

    def ws_logon(self, params: Mapping[str, Any]) -> str:
        """``session.logon``: like ``ws`` but Ed25519 keys only (an HMAC key: -2015)."""
        key = params.get("apiKey")
        cred = self._lookup(key if isinstance(key, str) else None)
        if cred.key_type != "ed25519":
            raise BinanceError(-2015, MSG_KEY_REJECTED)
        self.check_timestamp(params)
        sig = params.get("signature")
        return self._verify(cred, ws_payload(params), sig if isinstance(sig, str) else None)


# ---------------------------------------------------------------------------
# Client side (tests, benchmarks, tools): sign as a Binance client does
# ---------------------------------------------------------------------------
def sign_payload(payload: bytes, *, secret: str | None = None, private_key: Any = None) -> str:
    """HMAC-SHA256 hex with ``secret``, or Ed25519 base64 with ``private_key`` (an Ed25519PrivateKey)."""
    if private_key is not None:
        return base64.b64encode(private_key.sign(payload)).decode()
    if secret is None:
        raise ValueError("sign_payload needs secret= (HMAC) or private_key= (Ed25519)")
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def signed_query(params: Mapping[str, Any], **key: Any) -> str:
    """A REST query string (percent-encoded, in ``params`` order) with ``&signature=`` appended."""
    from urllib.parse import quote, urlencode

    q = urlencode({k: _text(v) for k, v in params.items()})
    return f"{q}&signature={quote(sign_payload(q.encode(), **key), safe='')}"
