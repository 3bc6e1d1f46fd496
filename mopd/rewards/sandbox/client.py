"""The parent side of the sandbox: ``run_tests`` writes a job, starts the harness (``harness/run_harness.py``)
as ``python -I -S`` in a new session with an empty environment, reads its JSON-lines records, enforces the
deadlines and cleans up (the process group, and in root mode every process of the sandbox uid).

See the package docstring for the process tree and the lock-down layers.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import random
import re
import shutil
import signal as _signal
import subprocess
import sys
import tempfile
import threading
import time

from mopd.rewards.sandbox.harness.sbx_protocol import _FORMAT_VERSION


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run (one rollout). ``time_limit`` itself comes with the tests."""

    memory_mb: int = 1024  # RLIMIT_AS of the harness and of every test process
    output_mb: int = 10  # RLIMIT_FSIZE: the largest file (and so stdout) a test may write
    workdir_mb: int = 256  # size cap of the tmpfs working directory (when namespaces are available)
    nproc: int = 32  # RLIMIT_NPROC: tasks (processes + threads) of the sandbox uid
    nofile: int = 256  # RLIMIT_NOFILE
    wall_factor: float = 2.0  # wall-clock limit per test = time_limit * wall_factor + wall_slack
    wall_slack: float = 1.0
    test_workers: int = 2  # tests of one rollout run in parallel, this many at a time
    max_timeouts: int = 2  # after this many time-outs the remaining tests are not run (they fail)
    startup_timeout: float = 20.0  # seconds for the harness to lock down and say hello
    allow_site_packages: bool = True  # numpy & co importable (read-only) inside the sandbox
    landlock: bool = True
    namespaces: bool = True  # mount/network (and, not root, user) namespaces where the kernel allows
    python_guard: bool = True  # the in-process audit-hook layer; False only to test the kernel layers
    python: str = ""  # interpreter; "" = sys.executable


DEFAULT_LIMITS = SandboxLimits()


@dataclasses.dataclass
class SandboxResult:
    tests: list  # one dict per test: status ok|error|timeout|output_limit|skipped|wrong, ...
    layers: dict  # what the harness applied (uid, namespaces, landlock ABI, rlimits, errors)
    error: str | None = None  # infrastructure failure (not the solution's fault)
    wall: float = 0.0


_ID_LOCK = threading.Lock()
_ID_RNG = random.SystemRandom()


_HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness", "run_harness.py")
_UID_BASE, _UID_SPAN = 1_900_000_000, 100_000_000
_counter = itertools.count()


def _sandbox_uid() -> int:
    with _ID_LOCK:
        return _UID_BASE + (_ID_RNG.randrange(_UID_SPAN) + next(_counter)) % _UID_SPAN


@functools.cache
def _read_paths() -> list:
    import sysconfig

    paths = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            paths.add(sysconfig.get_paths()[key])
        except KeyError:
            pass
    return sorted(p for p in paths if p)


@functools.cache
def _site_paths() -> list:
    import sysconfig

    out = []
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p and p not in out and os.path.isdir(p):
            out.append(p)
    return out


def _kill_uid(uid: int) -> None:
    """SIGKILL every process running as ``uid`` (root mode: the sandbox uid is unique to one run)."""
    for _ in range(5):
        found = False
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:  # not st_uid of /proc/PID: a process that changed uid is non-dumpable, shown as root
                with open(f"/proc/{pid}/status", "rb") as f:
                    status = f.read(4096)
                m = re.search(rb"\nUid:\s+(\d+)", status)
                if not m or int(m.group(1)) != uid:
                    continue
                os.kill(int(pid), _signal.SIGKILL)
                found = True
            except (OSError, ValueError):
                continue
        if not found:
            return
        time.sleep(0.01)


def run_tests(
    code: str,
    mode: str,
    tests: list,
    *,
    fn_name: str | None = None,
    context: str = "",
    time_limit: float = 6.0,
    limits: SandboxLimits | None = None,
) -> SandboxResult:
    """Run ``code`` against ``tests`` in a fresh sandbox; see the module docstring.

    ``tests``: stdin -> list of input strings; functional -> list of {"args": [...], "kwargs": {...}}
    (JSON data); code -> list of assert scripts. Returns per-test raw results (stdout / JSON of the
    return value / pass-fail of the script); comparing them with expected outputs is the caller's job.
    """
    if mode not in ("stdin", "functional", "code"):
        raise ValueError(f"sandbox mode must be stdin, functional or code, got {mode!r}")
    lim = limits or DEFAULT_LIMITS
    t_start = time.monotonic()
    jobdir = tempfile.mkdtemp(prefix="mopd-sbx-")
    is_root = os.geteuid() == 0
    uid = _sandbox_uid() if is_root else None
    proc = None
    results: dict = {}
    layers: dict = {}
    error = None
    try:
        os.chmod(jobdir, 0o711)
        workdir = os.path.join(jobdir, "work")
        os.mkdir(workdir, 0o700)
        if uid is not None:
            os.chown(workdir, uid, uid)
        scripts = []
        if mode == "code":
            for i, script in enumerate(tests):
                path = os.path.join(jobdir, f"script_{i}.py")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
                    f.write(str(script))
                scripts.append(path)
        n = len(tests)
        wall_per_test = time_limit * lim.wall_factor + lim.wall_slack
        job = {
            "format": _FORMAT_VERSION,
            "mode": mode,
            "code": code,
            "context": context or "",
            "fn_name": fn_name,
            "time_limit": float(time_limit),
            "workdir": workdir,
            "tests": [] if mode == "code" else list(tests),
            "scripts": scripts,
            "site_paths": _site_paths() if lim.allow_site_packages else [],
            "limits": dataclasses.asdict(lim),
            "sandbox": {
                "workdir": workdir,
                "jobdir": jobdir,
                "uid": uid,
                "gid": uid,
                "memory_mb": lim.memory_mb,
                "output_mb": lim.output_mb,
                "workdir_mb": lim.workdir_mb,
                "nproc": lim.nproc,
                "nofile": lim.nofile,
                "cpu_total": int(n * (time_limit + 2) + 30),
                "read_paths": _read_paths(),
                "landlock": lim.landlock,
                "namespaces": lim.namespaces,
            },
        }
        fd = os.open(os.path.join(jobdir, "job.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            json.dump(job, f)
        del job

        r, w = os.pipe()
        env = {
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "HOME": workdir,
            "TMPDIR": workdir,
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        try:
            proc = subprocess.Popen(
                [lim.python or sys.executable, "-I", "-S", _HARNESS, jobdir, str(w)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(w,),
                cwd=jobdir,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(w)
        deadline = time.monotonic() + lim.startup_timeout + n * wall_per_test + 5
        error, layers = _collect(proc, r, results, n, lim, wall_per_test, deadline)
    except OSError as exc:
        error = f"sandbox could not be started: {exc}"
    finally:
        if proc is not None:
            clean = error is None
            try:
                os.killpg(proc.pid, _signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            if uid is not None and not clean:
                _kill_uid(uid)
        shutil.rmtree(jobdir, ignore_errors=True)
    tests_out = [results.get(i, {"status": "skipped"}) for i in range(len(tests))]
    return SandboxResult(tests=tests_out, layers=layers, error=error, wall=time.monotonic() - t_start)


def _collect(proc, rfd, results, n, lim, wall_per_test, deadline):
    """Read the harness' JSON lines until it says done; enforce the deadlines. -> (error, layers)."""
    import selectors

    sel = selectors.DefaultSelector()
    bufs = {rfd: bytearray(), proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    result_cap = 64 << 20
    log_cap = 64 << 10
    layers: dict = {}
    error = None
    done = False
    last = time.monotonic()
    inactivity = lim.startup_timeout
    try:
        while sel.get_map() and not done:
            now = time.monotonic()
            if now > deadline or now - last > inactivity:
                error = "sandbox did not start in time" if not layers else "sandbox harness stopped responding"
                break
            for key, _ in sel.select(timeout=min(deadline - now, inactivity - (now - last), 1.0)):
                fd = key.fd
                try:
                    chunk = os.read(fd, 1 << 20)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    continue
                if fd != rfd:
                    if len(bufs[fd]) < log_cap:
                        bufs[fd] += chunk[: log_cap - len(bufs[fd])]
                    continue
                buf = bufs[rfd]
                buf += chunk
                while True:
                    j = buf.find(b"\n")
                    if j < 0:
                        break
                    line = bytes(buf[:j])
                    del buf[: j + 1]
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        error = "sandbox harness sent a malformed record"
                        done = True
                        break
                    last = time.monotonic()
                    kind = rec.get("type")
                    if kind == "hello":
                        layers = rec.get("layers") or {}
                        inactivity = wall_per_test + 5.0
                    elif kind == "test":
                        i = rec.pop("i", None)
                        rec.pop("type", None)
                        if isinstance(i, int) and 0 <= i < n and i not in results:
                            results[i] = rec
                    elif kind == "done":
                        done = True
                    elif kind == "fatal":
                        error = "sandbox harness failed: " + str(rec.get("error", ""))[-2000:]
                        done = True
                if len(buf) > result_cap:
                    error = "sandbox harness sent too much data"
                    done = True
                if done:
                    break
        else:
            if not done and error is None:
                error = "sandbox harness exited unexpectedly"
    finally:
        sel.close()
        os.close(rfd)
    if error is not None:
        stderr_tail = bytes(bufs[proc.stderr.fileno()]).decode(errors="replace").strip()
        if stderr_tail and "harness" in error:
            error += "\n" + stderr_tail[-1500:]
    return error, layers


_LAYERS_CACHE: dict = {}


def sandbox_layers(limits: SandboxLimits | None = None) -> dict:
    """What the sandbox applies on this machine (runs one trivial program once; cached)."""
    key = limits or DEFAULT_LIMITS
    if key not in _LAYERS_CACHE:
        res = run_tests("print(1)", "stdin", [""], time_limit=2.0, limits=key)
        _LAYERS_CACHE[key] = dict(res.layers, error=res.error)
    return _LAYERS_CACHE[key]
