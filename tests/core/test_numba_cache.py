"""The keyed numba cache: a kernel never runs with constants frozen from an older version of the tree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import numba_cache
from core.numba_cache import KEEP_RECENT, MAX_AGE_S, cache_key, configure, is_warm, kernel_sources

ROOT = Path(__file__).resolve().parents[2]
DAY = 24 * 3600


@pytest.fixture(autouse=True)
def _restore_numba_env(monkeypatch):
    """configure() rewrites NUMBA_CACHE_DIR: give the session's value back afterwards."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", os.environ.get("NUMBA_CACHE_DIR", ""))
    monkeypatch.delenv(numba_cache.BASE_ENV, raising=False)
    yield
    monkeypatch.undo()
    config = sys.modules.get("numba.core.config")
    if config is not None:
        config.reload_config()


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the kernel packages (core/, ringbuffers/, processes/)."""
    dst = tmp_path / "tree"
    for pkg in numba_cache.KERNEL_PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _append(path: Path, text: str = "\n# edited\n") -> None:
    path.write_text(path.read_text() + text)


# -- the key -----------------------------------------------------------------------------------

def test_key_is_deterministic_within_and_across_processes(tree):
    key = cache_key(tree, fresh=True)
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert cache_key(tree, fresh=True) == key
    code = f"from core.numba_cache import cache_key; print(cache_key({str(tree)!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == key


def test_key_changes_when_a_kernel_file_changes(tree):
    before = cache_key(tree, fresh=True)
    _append(tree / "core" / "book_worker_kernels.py")
    assert cache_key(tree, fresh=True) != before


def test_key_changes_when_a_module_a_kernel_imports_changes(tree):
    sources = kernel_sources(tree)
    records = tree / "core" / "records.py"
    imported = numba_cache._imported_names("core.records", False, records.read_bytes())
    assert not any(n.split(".")[0] == "numba" for n in imported)  # only reached through the kernels' imports
    assert records in sources
    before = cache_key(tree, fresh=True)
    _append(records)
    assert cache_key(tree, fresh=True) != before


def test_key_ignores_a_module_no_kernel_imports(tree):
    sources = set(kernel_sources(tree))
    unrelated = sorted(p for p in (tree / "processes").glob("*.py") if p not in sources)
    assert unrelated, "expected a processes/ module outside the kernels' import closure"
    before = cache_key(tree, fresh=True)
    _append(unrelated[0])
    (tree / "processes" / "new_tool.py").write_text("import numpy\n")
    assert cache_key(tree, fresh=True) == before


# -- the hazard, in real processes ---------------------------------------------------------------

# core.book.book_mid divides by FIXED_SCALE, a constant it imports from
# core.records: numba freezes it into the compiled kernel.
KERNEL_RUN = """
import os, sys
if {configure}:
    from core.numba_cache import configure
    configure(base=sys.argv[1])
import core
from core.book import alloc_book, book_mid, book_set_level
assert core.__file__.startswith(os.getcwd()), core.__file__
keys, qtys, count = alloc_book(1, 4)
book_set_level(keys, qtys, count, 0, 0, 100 * 10**8, 1)  # bid 100.0 at the scale of today
book_set_level(keys, qtys, count, 0, 1, 102 * 10**8, 1)  # ask 102.0
print(os.environ["NUMBA_CACHE_DIR"])
print(book_mid(keys, qtys, count, 0))
"""


def _run_kernel(tree: Path, *, base: Path | None = None, fixed_dir: Path | None = None) -> tuple[Path, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", numba_cache.BASE_ENV)}
    env["PYTHONPATH"] = str(tree)
    if fixed_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(fixed_dir)
    code = KERNEL_RUN.format(configure=base is not None)
    p = subprocess.run([sys.executable, "-c", code, str(base)], cwd=tree, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    cache_dir, mid = p.stdout.strip().splitlines()[-2:]
    return Path(cache_dir), float(mid)


def test_edited_constant_in_another_module_is_used_not_the_cached_one(tree, tmp_path):
    records = tree / "core" / "records.py"
    src = records.read_text()
    assert re.search(r"^FIXED_SCALE = 10\*\*8$", src, re.M)
    base, fixed = tmp_path / "numba_cache", tmp_path / "fixed_cache"

    keyed_1, mid_1 = _run_kernel(tree, base=base)
    _, stale_1 = _run_kernel(tree, fixed_dir=fixed)
    assert mid_1 == stale_1 == 101.0
    assert keyed_1.parent == base and is_warm(keyed_1)

    # Only the other module changes: core/book.py, the kernel's own file, is untouched.
    records.write_text(re.sub(r"^FIXED_SCALE = 10\*\*8$", "FIXED_SCALE = 10**6", src, count=1, flags=re.M))
    keyed_2, mid_2 = _run_kernel(tree, base=base)
    assert keyed_2.parent == base and keyed_2 != keyed_1
    assert mid_2 == 10100.0  # the edit took effect

    # The hazard the keyed dir removes: one fixed NUMBA_CACHE_DIR serves the kernel
    # compiled with the old constant.
    _, stale_2 = _run_kernel(tree, fixed_dir=fixed)
    assert stale_2 == 101.0


# -- warm / cold -------------------------------------------------------------------------------

def test_is_warm_false_on_an_empty_dir_true_after_a_compile(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    assert not is_warm(cache)
    assert not is_warm(tmp_path / "missing")
    (tmp_path / "kern.py").write_text("import numba\n\n@numba.njit(cache=True)\ndef inc(x):\n    return x + 1\n")
    subprocess.run([sys.executable, "-c", "import kern; assert kern.inc(1) == 2"], cwd=tmp_path, check=True,
                   env=dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(tmp_path)), timeout=120)
    assert is_warm(cache)


# -- configure ---------------------------------------------------------------------------------

def test_configure_sets_an_absolute_keyed_dir_and_is_idempotent(tmp_path):
    path = configure(base=tmp_path / "base")
    assert path == (tmp_path / "base" / cache_key()).resolve() and path.is_absolute() and path.is_dir()
    assert os.environ["NUMBA_CACHE_DIR"] == str(path)
    assert configure(base=tmp_path / "base") == path


def test_configure_replaces_a_fixed_dir_and_honours_the_base_override(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "fixed"))
    monkeypatch.setenv(numba_cache.BASE_ENV, str(tmp_path / "elsewhere"))
    path = configure()
    assert path == tmp_path / "elsewhere" / cache_key()
    assert os.environ["NUMBA_CACHE_DIR"] == str(path)


def test_cli_print_names_the_keyed_dir(tmp_path):
    env = dict(os.environ, **{numba_cache.BASE_ENV: str(tmp_path)})
    out = subprocess.run([sys.executable, "-m", "core.numba_cache", "--print"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(tmp_path / cache_key())


def test_cleanup_keeps_the_current_dir_and_the_most_recent_others(tmp_path):
    base = tmp_path / "base"
    now = time.time()
    current = base / cache_key()
    ages_days = {"a" * 16: 1, "b" * 16: 8, "c" * 16: 9, "d" * 16: 10, "e" * 16: 11, "f" * 16: 30}
    for name, age in {**ages_days, current.name: 60, "not-a-key": 60}.items():
        (base / name / "sub").mkdir(parents=True)
        os.utime(base / name, (now - age * DAY, now - age * DAY))
    assert MAX_AGE_S == 7 * DAY and KEEP_RECENT == 3

    configure(base=base)

    left = {p.name for p in base.iterdir()}
    assert left == {current.name, "not-a-key", "a" * 16, "b" * 16, "c" * 16}
    assert now - current.stat().st_mtime < 60  # marked used
