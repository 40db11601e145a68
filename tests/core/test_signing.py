"""core.signing: Binance's documented HMAC vectors (REST plain and non-ASCII, WS API), Ed25519 round trips,
credentials from the environment, and secrets kept out of repr and pickles."""

from __future__ import annotations

import base64
import pickle

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from core.errors import ConfigError
from core.signing import (
    Credentials,
    Ed25519Signer,
    HmacSigner,
    load_credentials,
    rest_payload,
    rest_query,
    ws_payload,
)

# Binance's documented example key pair (reference binance-spot-api.md §5, binance-ws-api.md §3)
KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
REST_PARAMS = [("symbol", "LTCBTC"), ("side", "BUY"), ("type", "LIMIT"), ("timeInForce", "GTC"), ("quantity", "1"),
               ("price", "0.1"), ("recvWindow", 5000), ("timestamp", 1499827319559)]  # fmt: skip
REST_PAYLOAD = ("symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000"
                "&timestamp=1499827319559")  # fmt: skip
REST_SIG = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
NON_ASCII = "１２３４５６"
NON_ASCII_ENCODED = "%EF%BC%91%EF%BC%92%EF%BC%93%EF%BC%94%EF%BC%95%EF%BC%96"
REST_NON_ASCII_SIG = "e1353ec6b14d888f1164ae9af8228a3dbd508bc82eb867db8ab6046442f33ef3"
WS_PARAMS = {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.01000000",
             "price": "52000.00", "recvWindow": 100, "timestamp": 1645423376532, "apiKey": KEY}  # fmt: skip
WS_PAYLOAD = (f"apiKey={KEY}&price=52000.00&quantity=0.01000000&recvWindow=100&side=SELL&symbol=BTCUSDT"
              "&timeInForce=GTC&timestamp=1645423376532&type=LIMIT")  # fmt: skip
WS_SIG = "aa1b5712c094bc4e57c05a1a5c1fd8d88dcd628338ea863fec7b88e59fe2db24"
WS_NON_ASCII_SIG = "b33892ae8e687c939f4468c6268ddd4c40ac1af18ad19a064864c47bae0752cd"


def test_rest_payload_and_hmac_reproduce_the_documented_plain_vector():
    assert rest_payload(REST_PARAMS) == REST_PAYLOAD
    assert HmacSigner(SECRET).sign(REST_PAYLOAD) == REST_SIG


def test_rest_payload_percent_encodes_a_non_ascii_symbol_before_signing_as_documented():
    params = [("symbol", NON_ASCII)] + REST_PARAMS[1:]
    payload = rest_payload(params)
    assert payload == REST_PAYLOAD.replace("LTCBTC", NON_ASCII_ENCODED)
    assert HmacSigner(SECRET).sign(payload) == REST_NON_ASCII_SIG


def test_ws_payload_sorts_includes_api_key_and_reproduces_the_documented_vectors():
    assert ws_payload(WS_PARAMS) == WS_PAYLOAD
    assert HmacSigner(SECRET).sign(ws_payload(WS_PARAMS)) == WS_SIG
    assert ws_payload({**WS_PARAMS, "signature": "x"}) == WS_PAYLOAD, "signature is never part of the payload"
    non_ascii = {**WS_PARAMS, "symbol": NON_ASCII, "side": "BUY", "quantity": "1.00000000", "price": "0.10000000",
                 "recvWindow": 5000}  # fmt: skip
    assert NON_ASCII in ws_payload(non_ascii), "the WS API signs raw UTF-8, not percent-encoded text"
    assert HmacSigner(SECRET).sign(ws_payload(non_ascii)) == WS_NON_ASCII_SIG


def test_payloads_render_booleans_and_refuse_none_values():
    assert ws_payload({"b": True, "a": False}) == "a=false&b=true"
    assert rest_payload([("omitZeroBalances", True)]) == "omitZeroBalances=true"
    with pytest.raises(ValueError, match="'price' is None"):
        ws_payload({"price": None})
    with pytest.raises(ValueError, match="'price' is None"):
        rest_payload([("price", None)])


def test_rest_query_appends_the_percent_encoded_signature_last():
    signer = Ed25519Signer(Ed25519PrivateKey.generate())
    q = rest_query(REST_PARAMS, signer)
    payload, _, sig = q.rpartition("&signature=")
    assert payload == REST_PAYLOAD
    assert "+" not in sig and "/" not in sig and "=" not in sig, "base64 is percent-encoded in a query string"
    assert rest_query(REST_PARAMS, HmacSigner(SECRET)) == f"{REST_PAYLOAD}&signature={REST_SIG}"


def test_ed25519_signature_verifies_with_the_public_key_and_is_base64():
    priv = Ed25519PrivateKey.generate()
    signer = Ed25519Signer(priv)
    payload = ws_payload({**WS_PARAMS, "symbol": NON_ASCII})
    sig = signer.sign(payload)
    priv.public_key().verify(base64.b64decode(sig, validate=True), payload.encode("utf-8"))  # raises if wrong
    signer.public_key().verify(base64.b64decode(sig), payload.encode("utf-8"))
    assert signer.supports_logon and not HmacSigner(SECRET).supports_logon


@pytest.mark.parametrize("form", ["pem", "pem_file", "hex", "base64", "encrypted_pem"])
def test_ed25519_private_key_loads_from_every_documented_form(form, tmp_path):
    priv = Ed25519PrivateKey.generate()
    seed = priv.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pem = priv.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    env = {"K": "edKey123"}
    if form == "pem":
        env["S"] = pem
    elif form == "pem_file":
        f = tmp_path / "key.pem"
        f.write_text(pem)
        env["S"] = str(f)
    elif form == "hex":
        env["S"] = seed.hex()
    elif form == "base64":
        env["S"] = base64.b64encode(seed).decode()
    else:
        env["S"] = priv.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw")).decode()
        env["P"] = "pw"
    creds = load_credentials("K", "S", key_type="ed25519", environ=env, password_env="P" if "P" in env else None)
    assert creds.api_key == "edKey123" and creds.key_type == "ed25519"
    sig = creds.signer.sign("a=1")
    priv.public_key().verify(base64.b64decode(sig), b"a=1")


def test_missing_or_bad_key_material_is_a_config_error_naming_the_variable_not_its_value():
    with pytest.raises(ConfigError, match="environment variable MY_SECRET is not set") as ei:
        load_credentials("MY_KEY", "MY_SECRET", environ={"MY_KEY": KEY}, path="execution.credentials")
    assert ei.value.path == "execution.credentials"
    with pytest.raises(ConfigError, match="environment variable MY_KEY is not set"):
        load_credentials("MY_KEY", "MY_SECRET", environ={"MY_SECRET": SECRET})
    with pytest.raises(ConfigError, match="API key in MY_KEY"):
        load_credentials("MY_KEY", "MY_SECRET", environ={"MY_KEY": "bad key!", "MY_SECRET": SECRET})
    bad_seed = "zz" * 20
    with pytest.raises(ConfigError, match="MY_SECRET holds no Ed25519 private key") as ei:
        load_credentials("MY_KEY", "MY_SECRET", key_type="ed25519", environ={"MY_KEY": KEY, "MY_SECRET": bad_seed})
    assert bad_seed not in str(ei.value)
    rsa_like = "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ConfigError, match="no Ed25519 private key"):
        load_credentials("MY_KEY", "MY_SECRET", key_type="ed25519", environ={"MY_KEY": KEY, "MY_SECRET": rsa_like})
    with pytest.raises(ConfigError, match="key_type"):
        load_credentials("MY_KEY", "MY_SECRET", key_type="rsa", environ={"MY_KEY": KEY, "MY_SECRET": SECRET})


def test_secrets_stay_out_of_repr_str_and_pickles():
    hmac_creds = load_credentials("K", "S", environ={"K": KEY, "S": SECRET})
    seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()
    ed_creds = load_credentials("K", "S", key_type="ed25519", environ={"K": KEY, "S": seed})
    for obj in (hmac_creds, ed_creds, hmac_creds.signer, ed_creds.signer):
        for text in (repr(obj), str(obj), f"{obj}"):
            assert SECRET not in text and seed not in text and KEY not in text, text
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(obj)
    assert repr(hmac_creds) == "Credentials(key_type='hmac', api_key=<hidden>)"
    assert isinstance(hmac_creds, Credentials)
