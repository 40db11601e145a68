"""One numba disk cache per version of the kernels: set ``NUMBA_CACHE_DIR`` before numba loads.

Why: numba's ``cache=True`` keys a cached kernel on its *own* file (path,
mtime, size) and the signature. It does not see what the kernel froze at
compile time from other modules: module-level constants (the ``S_*``/``C_*``
columns of ``core/book_sync.py`` used by ``core/book_worker_kernels.py``) and
the code of ``@njit`` callees in other files, which are linked into the
caller. Edit ``book_sync.py`` only, and the cached ``book_worker_kernels``
entries still load, with the old constants. Upgrading numba/llvmlite or moving
the cache to another CPU has the same flavour of risk.

The fix is a keyed directory: ``<base>/<key>`` where ``key = cache_key()``
hashes everything such a kernel can depend on:

* the bytes of every *kernel source file*: each ``.py`` under ``core/``,
  ``ringbuffers/``, ``processes/`` that imports numba, plus, transitively,
  every module of those packages that it imports (and their package
  ``__init__``), found with ``ast`` from the import statements;
* the numba, llvmlite and Python versions (from package metadata, so numba is
  not imported);
* the CPU (``model name`` and ``flags`` of ``/proc/cpuinfo``).

Any change gives a fresh, empty directory, so nothing stale can load; an
unrelated edit (a non-kernel module) keeps the warm one.

Entry points call ``configure()`` before anything imports numba (this module
imports only the standard library for that reason)::

    from core.numba_cache import configure
    configure()            # sets os.environ["NUMBA_CACHE_DIR"]; a few ms

Location: ``<project root>/.numba_cache/<key>``. A ``NUMBA_CACHE_DIR`` that is
already set is replaced (inherited from a parent process it is one of our
keyed dirs anyway; a fixed directory set by hand is exactly the hazard above,
so it is replaced with a warning). To put the cache elsewhere set
``RINGTRADER_NUMBA_CACHE_BASE=/some/dir``: the cache then lives in
``/some/dir/<key>``. ``configure()`` also deletes keyed directories beside
the current one that were last used more than ``MAX_AGE_S`` ago, keeping the
``KEEP_RECENT`` most recent ones (switching between two branches stays warm).

CLI::

    python -m core.numba_cache --print                      # the cache dir
    python -m core.numba_cache --warm config/system.json    # compile every kernel now
"""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import platform
import re
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KERNEL_PACKAGES = ("core", "ringbuffers", "processes")
BASE_ENV = "RINGTRADER_NUMBA_CACHE_BASE"
BASE_NAME = ".numba_cache"
KEY_LEN = 16  # hex digits of the key: the name of a keyed dir
KEY_RE = re.compile(rf"^[0-9a-f]{{{KEY_LEN}}}$")
MAX_AGE_S = 7 * 24 * 3600  # keyed dirs unused for longer are removed ...
KEEP_RECENT = 3  # ... except the most recent ones besides the current dir
COMPILE_ESTIMATE_FILE = ".last_compile_s"  # in the base dir: seconds the last cold --warm took
COMPLETE_MARKER = ".complete"  # in a keyed dir: one process compiled every pipeline kernel into it (--warm)
COMPILE_ESTIMATE_DEFAULT_S = 60

# Import statements, located by text (ast.parse of whole files costs ~40 ms for
# the tree; of the statements alone, ~1 ms). Each match is then parsed by ast;
# a file with a match that does not parse is parsed whole.
_IMPORT_STMT = re.compile(
    rb"^[ \t]*(?:import[ \t]+[^\n]*|from[ \t]+\.*[\w.]*[ \t]+import[ \t]*(?:\([^)]*\)|[^\n]*))", re.M)

_keys: dict[Path, str] = {}  # root -> key, computed once per process


# -- the key ---------------------------------------------------------------------------------

def _module_index(root: Path) -> dict[str, Path]:
    """``{"core.book": root/core/book.py, "core": root/core/__init__.py, ...}`` for the kernel packages."""
    index: dict[str, Path] = {}
    for pkg in KERNEL_PACKAGES:
        top = root / pkg
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
            rel = Path(dirpath).relative_to(root).parts
            for f in filenames:
                if not f.endswith(".py"):
                    continue
                parts = rel if f == "__init__.py" else (*rel, f[:-3])
                index[".".join(parts)] = Path(dirpath) / f
    return index


def _import_nodes(source: bytes):
    """The ``Import``/``ImportFrom`` nodes of ``source`` (see ``_IMPORT_STMT``)."""
    nodes, exact = [], True
    for m in _IMPORT_STMT.finditer(source):
        try:
            tree = ast.parse(m.group().strip())
        except SyntaxError:  # a continuation line, or prose in a docstring
            exact = False
            continue
        nodes.extend(n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    if not exact:  # parse the whole file instead (a file that does not parse keeps what was found)
        try:
            nodes = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))]
        except SyntaxError:
            pass
    return nodes


def _imported_names(modname: str, is_pkg: bool, source: bytes) -> set[str]:
    """Absolute dotted names ``source`` may import (``from a import b`` gives ``a`` and ``a.b``)."""
    names: set[str] = set()
    pkg_parts = modname.split(".") if is_pkg else modname.split(".")[:-1]
    for node in _import_nodes(source):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
            continue
        if node.level:
            base = pkg_parts[:len(pkg_parts) - (node.level - 1)]
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
        else:
            mod = node.module or ""
        if mod:
            names.add(mod)
        names.update(f"{mod}.{a.name}" if mod else a.name for a in node.names)
    return names


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # removed while we looked (an edit in progress): hashed as empty
        return b""


def kernel_sources(root: Path | str | None = None) -> list[Path]:
    """The kernel source files under ``root`` (see the module docstring), sorted."""
    return list(_kernel_sources(Path(root or PROJECT_ROOT).resolve()))


def _kernel_sources(root: Path) -> dict[Path, bytes]:
    """``{path: bytes}`` of the kernel source files, sorted by path relative to ``root``."""
    index = _module_index(root)
    by_path = {p: name for name, p in index.items()}
    sources = {p: _read(p) for p in index.values()}
    imports: dict[Path, set[str]] = {}

    def imports_of(p: Path) -> set[str]:
        if p not in imports:
            imports[p] = _imported_names(by_path[p], p.name == "__init__.py", sources[p])
        return imports[p]

    todo = [p for p, src in sources.items()
            if b"numba" in src and any(n == "numba" or n.startswith("numba.") for n in imports_of(p))]
    seen = set(todo)
    while todo:
        p = todo.pop()
        for name in imports_of(p):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # the module and the packages it runs on import
                dep = index.get(".".join(parts[:i]))
                if dep is not None and dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
    return {p: sources[p] for p in sorted(seen, key=lambda p: p.relative_to(root).as_posix())}


def _version(dist: str) -> str:
    from importlib import metadata  # ~10 ms to import: only when a key is computed

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def _cpu_name() -> str:
    """``model name`` and ``flags`` of the first CPU in /proc/cpuinfo; else platform's names."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # end of the first processor's block
                k, _, v = line.partition(":")
                fields[k.strip()] = v.strip()
    except OSError:
        pass
    model, flags = fields.get("model name", ""), fields.get("flags", "")
    if not model and not flags:
        return f"{platform.machine()} {platform.processor()}"
    return f"{model} flags={' '.join(sorted(flags.split()))}"


def cache_key(root: Path | str | None = None, *, fresh: bool = False) -> str:
    """A short hex hash of the kernel sources, numba/llvmlite/Python versions and the CPU.

    Computed once per process per ``root``; ``fresh=True`` recomputes (after
    editing files in this process, as tests do).
    """
    root = Path(root or PROJECT_ROOT).resolve()
    if not fresh and root in _keys:
        return _keys[root]
    h = hashlib.sha256()
    for p, src in _kernel_sources(root).items():
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(src).digest())
    for part in (f"numba={_version('numba')}", f"llvmlite={_version('llvmlite')}", f"numpy={_version('numpy')}",
                 f"python={sys.version}", f"cpu={_cpu_name()}"):
        h.update(part.encode() + b"\0")
    _keys[root] = key = h.hexdigest()[:KEY_LEN]
    return key


# -- the directory ---------------------------------------------------------------------------

def cache_base(root: Path | str | None = None, base: Path | str | None = None) -> Path:
    """Where keyed dirs live: ``base``, else ``$RINGTRADER_NUMBA_CACHE_BASE``, else ``<root>/.numba_cache``."""
    chosen = base or os.environ.get(BASE_ENV) or Path(root or PROJECT_ROOT) / BASE_NAME
    return Path(os.path.abspath(chosen))


def cache_dir(root: Path | str | None = None, base: Path | str | None = None) -> Path:
    """``<base>/<key>``, without touching the environment or the disk."""
    return cache_base(root, base) / cache_key(root)


def configure(root: Path | str | None = None, base: Path | str | None = None) -> Path:
    """Point numba at the keyed cache dir (``os.environ["NUMBA_CACHE_DIR"]``) and return it.

    Call before numba is imported (a kernel decorated earlier keeps the dir it
    saw). Idempotent; the key is computed once per process. Also marks the dir
    used and removes old sibling dirs (``MAX_AGE_S``, ``KEEP_RECENT``).
    """
    base_dir = cache_base(root, base)
    path = base_dir / cache_key(root)
    prev = os.environ.get("NUMBA_CACHE_DIR")
    if prev and Path(prev) != path and Path(prev) != base_dir and not KEY_RE.match(Path(prev).name):
        log.warning("NUMBA_CACHE_DIR=%s replaced by the keyed cache %s (set %s to move the cache)",
                    prev, path, BASE_ENV)
    os.environ["NUMBA_CACHE_DIR"] = str(path)
    config = sys.modules.get("numba.core.config")
    if config is not None:  # numba came first: make its config see the dir (kernels not yet decorated)
        config.reload_config()
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.utime(path)  # "last used": numba writes into subdirs, which leaves this mtime alone
    except OSError as exc:  # numba then warns per kernel and compiles in memory: slow, never stale
        log.warning("cannot use the numba cache dir %s: %s", path, exc)
        return path
    _remove_old(base_dir, keep=path)
    return path


def _remove_old(base_dir: Path, keep: Path, now: float | None = None) -> list[Path]:
    """Delete keyed dirs in ``base_dir`` unused for ``MAX_AGE_S``, except ``keep`` and the ``KEEP_RECENT`` newest."""
    now = time.time() if now is None else now
    others = []
    try:
        entries = list(os.scandir(base_dir))
    except OSError:
        return []
    for e in entries:
        if KEY_RE.match(e.name) and e.path != str(keep):
            try:
                if e.is_dir(follow_symlinks=False):
                    others.append((e.stat(follow_symlinks=False).st_mtime, Path(e.path)))
            except OSError:
                continue
    others.sort(reverse=True)
    removed = []
    for mtime, p in others[KEEP_RECENT:]:
        if now - mtime > MAX_AGE_S:
            import shutil

            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def is_warm(path: Path | str | None = None) -> bool:
    """Whether the cache dir (default: the keyed dir ``configure()`` chose) already holds numba index files."""
    if path is None:
        env = os.environ.get("NUMBA_CACHE_DIR", "")
        path = env if KEY_RE.match(Path(env).name) else cache_dir()
    for _dirpath, _dirnames, filenames in os.walk(Path(path)):
        if any(f.endswith(".nbi") for f in filenames):
            return True
    return False


def is_complete(path: Path | str | None = None) -> bool:
    """Whether ``--warm`` has compiled every pipeline kernel into the keyed dir (its marker is there)."""
    path = Path(path) if path is not None else Path(os.environ.get("NUMBA_CACHE_DIR") or cache_dir())
    return (path / COMPLETE_MARKER).exists()


def ensure_compiled(config_path: str, timeout_s: float = 600.0, log=None) -> tuple[bool, float]:
    """Compile every kernel in ONE process before several processes start, unless already done.

    Why one process: numba's disk cache is not safe against several
    processes compiling overloads of the same function at once. A function's
    compiled symbols carry a per-process counter (the ABI tag), so two
    processes that each compile a different signature can write index and
    object files that do not match, and a later load links the wrong
    machine code (numba issue 10128; seen here as records read with another
    record type's field offsets after a cold start of the pipeline). Running
    ``--warm`` alone first means the pipeline's processes only ever *load*.

    Returns ``(compiled now, seconds)``; raises ``RuntimeError`` if the warm
    step fails or times out.
    """
    import subprocess

    path = configure()
    if is_complete(path):
        return False, 0.0
    t0 = time.monotonic()
    if log is not None:
        log(cold_start_message())
    p = subprocess.run([sys.executable, "-m", "core.numba_cache", "--warm", str(config_path)],
                       capture_output=True, text=True, timeout=timeout_s)
    if p.returncode != 0:
        raise RuntimeError(f"compiling the numba kernels failed (exit {p.returncode}): "
                           f"{(p.stderr or p.stdout).strip()[-2000:]}")
    return True, time.monotonic() - t0


def compile_estimate_s(root: Path | str | None = None, base: Path | str | None = None) -> int:
    """Seconds a cold compile of every kernel took last time here (``--warm``), else a guess."""
    try:
        return max(1, round(float((cache_base(root, base) / COMPILE_ESTIMATE_FILE).read_text())))
    except (OSError, ValueError):
        return COMPILE_ESTIMATE_DEFAULT_S


def cold_start_message(root: Path | str | None = None, base: Path | str | None = None) -> str:
    """The line an entry point prints before compiling into an empty cache."""
    return f"compiling numba kernels (first run only, ~{compile_estimate_s(root, base)} s)"


# -- CLI -------------------------------------------------------------------------------------

def _warm(config_path: str) -> int:
    path = configure()
    from core.config import load_config
    from core.errors import ConfigError

    try:
        cfg = load_config(config_path, host_cpus=None)
    except ConfigError as exc:
        print(f"cannot warm numba kernels: {exc}", file=sys.stderr)
        return 2
    cold = not is_warm(path)
    if cold:
        print(cold_start_message(), flush=True)
    t0 = time.monotonic()
    from processes.runtime import warm_all

    servable, problems = warm_all(cfg)
    if cfg.simulator_enabled:  # the local exchange's kernels too: the first start in sim mode compiles nothing
        try:
            from processes.simulator.worker import warm as warm_simulator

            warm_simulator(cfg)
        except Exception as exc:  # noqa: BLE001 - reported; the simulator then compiles at its start
            problems["simulator"] = f"{type(exc).__name__}: {exc}"
    took = time.monotonic() - t0
    for name, reason in sorted(problems.items()):
        print(f"cannot warm {name}: {reason}", file=sys.stderr)
    if cold and not problems:
        tmp = cache_base() / f"{COMPILE_ESTIMATE_FILE}.{os.getpid()}"
        tmp.write_text(f"{took:.1f}\n")
        os.replace(tmp, cache_base() / COMPILE_ESTIMATE_FILE)
    if not problems:
        (path / COMPLETE_MARKER).write_text(f"{took:.1f}\n")
    print(f"numba kernels {'compiled' if cold else 'loaded'} in {took:.1f} s "
          f"({len(servable)} processes) into {path}", flush=True)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m core.numba_cache", description=__doc__.split("\n\n")[0])
    ap.add_argument("--print", action="store_true", help="print the keyed cache dir (and create it)")
    ap.add_argument("--warm", metavar="CONFIG", help="compile (or load) every pipeline kernel for CONFIG")
    args = ap.parse_args(argv)
    if not args.print and not args.warm:
        ap.error("nothing to do: give --print and/or --warm CONFIG")
    if args.print:
        print(configure())
    if args.warm:
        return _warm(args.warm)
    return 0


if __name__ == "__main__":
    from core.numba_cache import main as _main  # the importable module, so its per-process key cache is shared

    sys.exit(_main())
