"""Binance request signing: credentials from the environment, HMAC-SHA256 / Ed25519 signers, signed payloads.

Pure (standard library + ``cryptography``), no I/O but reading the
environment (and, for Ed25519, a PEM file the variable may point to).

What is signed (source: binance-spot-api-docs ``rest-api.md`` /
``web-socket-api.md``; summary in ../shared/reference/binance-spot-api.md §5
and binance-ws-api.md §3)
-----------------------------------------------------------------------------
* REST (``rest_payload``): the query string concatenated with the request
  body, no separator, **percent-encoded before signing** (required since
  2026-01; a raw non-ASCII symbol gives -1022). Params keep the caller's
  order; each name and value is percent-encoded as RFC 3986 (everything but
  ``A-Z a-z 0-9 - _ . ~``), joined ``k=v`` with ``&``. Our REST client sends
  every param in the query string and an empty body, so the payload is the
  query string. The ``signature`` goes last, itself percent-encoded (an
  Ed25519 signature is base64 and holds ``+ / =``).
* WS API (``ws_payload``): every param but ``signature`` - ``apiKey``,
  ``timestamp`` and ``recvWindow`` included - sorted by name (code-point
  order), ``k=v`` joined by ``&``, values as raw UTF-8 text, **not**
  percent-encoded. Booleans render as ``true``/``false`` (Binance does not
  document it; the simulator does the same). Send exactly the values you
  signed: a ``None`` value is refused (omit the param instead).

Signatures (``Signer.sign``): HMAC-SHA256 as lower-case hex (Binance accepts
any case), Ed25519 as standard base64 (case-sensitive). ``session.logon``
(WS API) takes Ed25519 keys only: ``Signer.supports_logon``.

Key material
------------
``load_credentials(api_key_env, secret_env, key_type=...)`` reads two
environment variables named by the caller (the config names the variables,
never the values):

* ``key_type="hmac"``: the secret variable holds the HMAC secret key text.
* ``key_type="ed25519"``: the secret variable holds the **private** key as
  one of: PEM text (``-----BEGIN PRIVATE KEY-----``, PKCS#8 as ``openssl
  genpkey -algorithm ed25519`` writes it; an encrypted PEM needs
  ``password_env``); a path to such a PEM file; the raw 32-byte seed as 64
  hex digits; the raw 32-byte seed in base64 (44 characters with ``=``).
  Hex is tried before base64 (64 hex digits are also valid base64).

Secrets never leave these objects through ``repr``, ``str``, logs or
pickling: the HMAC secret lives only inside a keyed ``hmac`` object (copied
per signature, which is also faster than re-keying), the Ed25519 key inside
``cryptography``'s key object; ``repr`` shows the key type; pickling raises
``TypeError``. Errors name the environment variable, never its value. The
API key is not a secret in the cryptographic sense but it identifies the
account: it is hidden from ``repr`` too (DESIGN: keys only from the
environment, never logged).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import string
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping
from urllib.parse import quote

from core.errors import ConfigError

__all__ = [
    "Credentials", "Ed25519Signer", "HmacSigner", "KEY_TYPES", "Signer", "load_credentials", "rest_payload",
    "rest_query", "ws_payload",
]  # fmt: skip

KEY_TYPES = ("hmac", "ed25519")
REST_SAFE_CHARS = "-_.~"  # RFC 3986 unreserved (besides alphanumerics): left as they are in a REST payload
_HEX = frozenset(string.hexdigits)
_API_KEY_RE = re.compile(r"^[A-Za-z0-9]{1,128}$")  # Binance keys are 64 alphanumerics


# ---------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------
def _text(name: str, v: Any) -> str:
    if v is None:
        raise ValueError(f"param {name!r} is None: omit it instead (the signed text must be what is sent)")
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else str(v)


def rest_payload(params: Iterable[tuple[str, Any]]) -> str:
    """The REST signed text: ``k=v&...`` in the given order, names and values percent-encoded (RFC 3986).

    ``params`` are ``(name, value)`` pairs; values are ``str`` (decimals as
    the exact text to send), ``int`` or ``bool``. The result is what goes on
    the wire as the query string and what is signed.
    """
    return "&".join(f"{quote(k, safe=REST_SAFE_CHARS)}={quote(_text(k, v), safe=REST_SAFE_CHARS)}" for k, v in params)


def ws_payload(params: Mapping[str, Any]) -> str:
    """The WS API signed text: every param but ``signature`` sorted by name, ``k=v&...``, raw (not percent-encoded)."""
    return "&".join(f"{k}={_text(k, params[k])}" for k in sorted(params) if k != "signature")


def rest_query(params: Iterable[tuple[str, Any]], signer: "Signer") -> str:
    """A signed REST query string: ``rest_payload(params)&signature=<percent-encoded signature>``."""
    payload = rest_payload(params)
    sig = signer.sign(payload)
    return f"{payload}&signature={quote(sig, safe='')}" if payload else f"signature={quote(sig, safe='')}"


# ---------------------------------------------------------------------------
# Signers
# ---------------------------------------------------------------------------
class Signer:
    """Signs a payload (``str`` as UTF-8, or ``bytes``) and returns the ``signature`` param's text."""

    key_type: str = ""
    supports_logon: bool = False  # WS API session.logon / userDataStream.subscribe (Ed25519 only)

    def sign(self, payload: str | bytes) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<secret hidden>)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError(f"{type(self).__name__} holds a secret and cannot be pickled")


class HmacSigner(Signer):
    """HMAC-SHA256 with the account's secret key; signatures are lower-case hex."""

    key_type = "hmac"
    supports_logon = False

    __slots__ = ("_mac",)

    def __init__(self, secret: str | bytes):
        if not secret:
            raise ValueError("HMAC secret is empty")
        key = secret.encode() if isinstance(secret, str) else bytes(secret)
        self._mac = hmac.new(key, digestmod=hashlib.sha256)  # keyed once; copied per signature

    def sign(self, payload: str | bytes) -> str:
        mac = self._mac.copy()
        mac.update(payload.encode("utf-8") if isinstance(payload, str) else payload)
        return mac.hexdigest()


class Ed25519Signer(Signer):
    """Ed25519 with the account's private key; signatures are standard base64.

    Build it from a ``cryptography`` ``Ed25519PrivateKey`` or with
    ``from_text`` (PEM text, raw seed as hex or base64; see the module docstring).
    """

    key_type = "ed25519"
    supports_logon = True

    __slots__ = ("_key",)

    def __init__(self, private_key: Any):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError(f"expected an Ed25519PrivateKey, got {type(private_key).__name__}")
        self._key = private_key

    @classmethod
    def from_text(cls, text: str | bytes, password: bytes | None = None) -> "Ed25519Signer":
        """From PEM text (PKCS#8 private key, optionally encrypted), 64 hex digits or base64 of the 32-byte seed.

        Raises ``ValueError`` (without the text in the message) when it is none of those.
        """
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        raw = text.encode() if isinstance(text, str) else bytes(text)
        stripped = raw.strip()
        if stripped.startswith(b"-----BEGIN"):
            try:
                key = load_pem_private_key(stripped, password=password)
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                raise ValueError(f"not a readable PEM private key ({type(exc).__name__})") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"the PEM holds a {type(key).__name__}, not an Ed25519 private key")
            return cls(key)
        seed: bytes | None = None
        s = stripped.decode("ascii", "replace")
        if len(s) == 64 and set(s) <= _HEX:
            seed = bytes.fromhex(s)
        else:
            try:
                seed = base64.b64decode(s, validate=True)
            except (binascii.Error, ValueError):
                seed = None
        if seed is None or len(seed) != 32:
            raise ValueError("neither PEM, nor a 32-byte seed as 64 hex digits or base64")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def public_key(self) -> Any:
        """The ``Ed25519PublicKey`` (what Binance is given; what verifies our signatures)."""
        return self._key.public_key()

    def sign(self, payload: str | bytes) -> str:
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        return base64.b64encode(self._key.sign(data)).decode("ascii")


# ---------------------------------------------------------------------------
# Credentials from the environment
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Credentials:
    """An API key and the signer of its secret. ``repr`` shows the key type only."""

    api_key: str = field(repr=False)
    signer: Signer = field(repr=False)

    @property
    def key_type(self) -> str:
        return self.signer.key_type

    def __repr__(self) -> str:
        return f"Credentials(key_type={self.key_type!r}, api_key=<hidden>)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("Credentials hold a secret and cannot be pickled")


def load_credentials(api_key_env: str, secret_env: str, *, key_type: str = "hmac", password_env: str | None = None,
                     environ: Mapping[str, str] | None = None, path: str = "") -> Credentials:  # fmt: skip
    """Read an API key and its secret from the environment variables named by the caller.

    ``key_type``: "hmac" (the secret variable holds the secret key) or
    "ed25519" (it holds the private key: PEM text, a PEM file path, or the
    32-byte seed in hex / base64). ``password_env`` names a variable holding
    the passphrase of an encrypted PEM. ``path`` is the config key that named
    the variables, for the error message.

    Raises ``ConfigError`` naming the variable (never its value) when one is
    unset or empty, the key is malformed, or the secret cannot be read.
    """
    env = os.environ if environ is None else environ
    if key_type not in KEY_TYPES:
        raise ConfigError(f"{path}.key_type" if path else "key_type",
                          f"must be one of {list(KEY_TYPES)}, got {key_type!r}")  # fmt: skip
    api_key, secret = env.get(api_key_env, ""), env.get(secret_env, "")
    for name, value in ((api_key_env, api_key), (secret_env, secret)):
        if not value:
            raise ConfigError(path, f"environment variable {name} is not set (or empty)")
    if not _API_KEY_RE.match(api_key):
        raise ConfigError(path, f"the API key in {api_key_env} is not 1-128 letters and digits")
    if key_type == "hmac":
        return Credentials(api_key, HmacSigner(secret))
    password = None
    if password_env is not None:
        pw = env.get(password_env, "")
        if not pw:
            raise ConfigError(path, f"environment variable {password_env} is not set (or empty)")
        password = pw.encode()
    text: str | bytes = secret
    if not secret.lstrip().startswith("-----BEGIN") and os.path.isfile(secret):
        try:
            with open(secret, "rb") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(path, f"{secret_env} names a file that cannot be read: {exc.strerror}") from None
    try:
        signer = Ed25519Signer.from_text(text, password)
    except ValueError as exc:
        raise ConfigError(path, f"{secret_env} holds no Ed25519 private key: {exc}") from None
    return Credentials(api_key, signer)
