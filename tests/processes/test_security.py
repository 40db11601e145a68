"""Security checks of a real trading run (issue 14): what a run exposes, to whom, and what it never writes.

* API keys come from the environment only: neither value appears in any log line, the summary, a journal
  row (or its WAL) or the metrics;
* every shared-memory segment of the instance is mode 0600, owned by the running user;
* every TCP listener of the run (metrics endpoint, simulator) is bound to 127.0.0.1, not a public
  interface; the operator's control socket is a 0600 unix socket;
* a pickled model is never unpickled without ``signal.allow_pickle`` (a refused file's code does not run).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from pathlib import Path

import pytest

from ringbuffers.ring import SEGMENT_PREFIX, SHM_DIR

from test_restart_recovery import trading_config
from test_supervisor import Run, msg

ROOT = Path(__file__).resolve().parents[2]


def tcp_listeners() -> dict[int, str]:
    """``{port: local address}`` of every listening TCP socket on this host (IPv4 and IPv6)."""
    out = {}
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A":  # TCP_LISTEN
                continue
            addr, port = f[1].split(":")
            if v6:
                text = "::1" if addr == "00000000000000000000000001000000" else (
                    "::" if set(addr) == {"0"} else addr)
            else:
                text = ".".join(str(b) for b in reversed(bytes.fromhex(addr)))
            out[int(port, 16)] = text
    return out


def test_a_trading_run_keeps_keys_out_of_every_output_and_listens_on_loopback_only(tmp_path, instance):
    import httpx

    key, secret = secrets.token_hex(32), secrets.token_hex(32)
    jdir = tmp_path / "journal"
    cfg = trading_config(instance, jdir, every=2)
    assert cfg["metrics"]["host"] == "127.0.0.1"  # the shipped config: not a public interface
    cfg["metrics"].pop("host")  # and the default when the key is absent is loopback too
    run = Run(tmp_path, cfg, "--duration", "12",
              env={"BINANCE_SIM_API_KEY": key, "BINANCE_SIM_API_SECRET": secret})
    try:
        listening = run.wait_event(msg("metrics endpoint listening"), 60)
        ctl = run.wait_event(msg("control socket listening"), 60)
        run.wait_event(lambda e: e.get("msg") == "event reconciled", 240)
        segs = [os.path.join(SHM_DIR, n) for n in os.listdir(SHM_DIR) if n.startswith(f"{SEGMENT_PREFIX}{instance}.")]
        modes = {p: os.stat(p) for p in segs}
        listeners = tcp_listeners()
        ctl_st = os.stat(ctl["socket"])
        time.sleep(1.0)
        scraped = httpx.get(f"http://127.0.0.1:{listening['port']}/metrics", timeout=10).text
        assert run.wait(120) == 0
    finally:
        run.kill_group()
    assert len(modes) >= 5  # the pipeline's rings (md, book, signals, orders, reports) and more
    for p, st in modes.items():
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid(), p
    assert stat.S_ISSOCK(ctl_st.st_mode) and stat.S_IMODE(ctl_st.st_mode) == 0o600
    for port in (listening["port"], cfg["simulator"]["port"]):
        assert listeners.get(port) == "127.0.0.1", (port, listeners.get(port))

    s = run.summary()
    assert s["execution"]["orders_sent"] > 0  # it really traded with those keys
    outputs = {"log": "".join(run.lines), "summary": run.summary_path.read_text(), "metrics": scraped}
    for f in jdir.iterdir():  # the journal and its WAL, as bytes
        outputs[f.name] = f.read_bytes().decode("latin-1")
    for name, text in outputs.items():
        for value in (key, secret):
            assert value not in text, f"a secret is in the {name}"


class _Marker:
    """Unpickling this runs ``Path.touch(path)``: proof of whether a pickle was loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_pickled_model_is_never_loaded_without_the_opt_in(tmp_path):
    import pickle

    from core.features import FEATURE_NAMES, FEATURE_VERSION
    from core.models import ModelError, load_model

    marker = tmp_path / "ran"
    model = tmp_path / "evil.pkl"
    model.write_bytes(pickle.dumps(_Marker(str(marker))))
    (tmp_path / "evil.json").write_text(json.dumps({"feature_names": list(FEATURE_NAMES),
                                                    "feature_version": FEATURE_VERSION}))
    kw = {"feature_names": FEATURE_NAMES, "feature_version": FEATURE_VERSION, "key": "signal.strategies[0].model"}
    with pytest.raises(ModelError) as e:
        load_model(model, allow_pickle=False, **kw)
    assert "allow_pickle" in str(e.value) and not marker.exists()
    with pytest.raises(ModelError, match="no predict"):  # with the opt-in it IS unpickled (then refused: no model)
        load_model(model, allow_pickle=True, **kw)
    assert marker.exists()  # so the first check did prove something
