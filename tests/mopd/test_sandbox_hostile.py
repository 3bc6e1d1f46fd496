"""Hostile programs against the code verifier's sandbox (mopd.rewards.sandbox / mopd.rewards.code).

Every program here is wrong (it cannot print / return / assert the expected value honestly). Each must
end within its limit with reward 0 and leave the host unharmed: this test process alive, the canary file
in tmp_path intact, nothing new outside the sandbox, no secret of our environment in any output or
feedback, no sandbox process left running. The ``kernel_only`` variants switch the in-process audit-hook
layer off (``python_guard=False``) to show that the kernel layers (uid, namespaces, Landlock, rlimits)
contain the same programs on their own where the machine provides them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time

import pytest

from mopd.rewards import code as cv
from mopd.rewards import sandbox

SECRET_ENV = "MOPD_TEST_SECRET_TOKEN"
SECRET_VALUE = "s3cr3t-" + "9f1c2b7d"
UID_RANGE = (1_900_000_000, 2_000_000_000)  # sandbox uids (root mode)

GUARDED = sandbox.DEFAULT_LIMITS
UNGUARDED = dataclasses.replace(sandbox.DEFAULT_LIMITS, python_guard=False)


def fence(src: str) -> str:
    return f"Here is my solution.\n```python\n{src}\n```\n"


def stdin_gt(inp="5\n", out="10", time_limit=1.0):
    return json.dumps({"inputs": [inp], "outputs": [out], "testtype": "stdin", "time_limit": time_limit})


def functional_gt(inputs=("3\n4",), outputs=("7",), fn_name="add", time_limit=1.0):
    return json.dumps(
        {
            "inputs": list(inputs),
            "outputs": list(outputs),
            "testtype": "functional",
            "fn_name": fn_name,
            "time_limit": time_limit,
        }
    )


def code_gt(script, time_limit=2.0, fn_name=""):
    return json.dumps(
        {"inputs": [script], "outputs": [""], "testtype": "code", "fn_name": fn_name, "time_limit": time_limit}
    )


def layers():
    return sandbox.sandbox_layers()


def kernel_layers_available() -> bool:
    """Own uid (root) or own user namespace (not root), network namespace, Landlock with signal scoping."""
    info = layers()
    own_identity = bool(info.get("uid")) or (os.geteuid() != 0 and info.get("mountns"))
    return own_identity and info.get("landlock", 0) >= 6 and bool(info.get("netns"))


def live_sandbox_processes() -> list:
    """Processes (not zombies) still running as a sandbox uid."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields.get("Uid", "0").split()[0])
        if UID_RANGE[0] <= uid < UID_RANGE[1] and not fields.get("State", "").strip().startswith(("Z", "X")):
            out.append((pid, fields.get("Name", "").strip()))
    return out


@pytest.fixture()
def host(tmp_path, monkeypatch):
    """A canary file, a secret in our environment, a listening socket; checked after the test."""
    monkeypatch.setenv(SECRET_ENV, SECRET_VALUE)
    canary = tmp_path / "canary.txt"
    canary.write_text("CANARY-" + SECRET_VALUE)
    os.chmod(tmp_path, 0o777)  # even a world-writable directory must stay untouched
    os.chmod(canary, 0o666)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    before = set(os.listdir(tmp_path))
    tmp_before = set(os.listdir("/tmp"))
    state = {"tmp": tmp_path, "canary": canary, "port": listener.getsockname()[1], "pid": os.getpid()}
    yield state
    assert canary.read_text() == "CANARY-" + SECRET_VALUE, "the canary file was changed"
    assert set(os.listdir(tmp_path)) == before, "a file appeared in / vanished from tmp_path"
    new_tmp = {n for n in set(os.listdir("/tmp")) - tmp_before if not n.startswith(("mopd-sbx-", "pytest"))}
    assert not any(n.startswith("evil") for n in new_tmp), f"files appeared in /tmp: {new_tmp}"
    try:
        conn, _ = listener.accept()
        conn.close()
        raise AssertionError("a sandboxed program connected to our socket")
    except BlockingIOError:
        pass
    listener.close()
    if os.geteuid() == 0:
        deadline = time.time() + 3
        while live_sandbox_processes() and time.time() < deadline:
            time.sleep(0.05)
        assert live_sandbox_processes() == [], "sandbox processes survived the run"


def check_hostile(result: dict, elapsed: float, limit: float) -> None:
    assert result["score"] == 0.0, result
    assert elapsed < limit, f"took {elapsed:.1f}s (limit {limit}s)"
    for key in ("feedback", "pred", "sandbox_error"):
        assert SECRET_VALUE not in str(result.get(key, "")), f"secret leaked into {key}"


def run(src: str, gt: str, limits=GUARDED):
    t0 = time.monotonic()
    result = cv.compute_score(fence(src), gt, limits=limits)
    return result, time.monotonic() - t0


# --- the corpus: (name, program) for stdin tests; {port}, {pid}, {tmp}, {canary} are filled in --------

STDIN_HOSTILE = {
    "infinite_loop": "while True:\n    pass",
    "sleep_forever": "import time\ntime.sleep(10**6)",
    "busy_threads": (
        "import threading\ndef spin():\n    while True: pass\n"
        "for _ in range(8): threading.Thread(target=spin).start()\nspin()"
    ),
    "fork_bomb": "import os\nwhile True:\n    os.fork()",
    "fork_bomb_posix": "import posix\nwhile True:\n    posix.fork()",
    "fork_bomb_shell": "import os\nos.system(':(){{ :|:& }};:')",
    "subprocess": "import subprocess\nsubprocess.run(['sh', '-c', 'echo 10'])",
    "multiprocessing": "import multiprocessing as mp\nmp.Process(target=print, args=(10,)).start()",
    "thread_bomb": (
        "import threading, time\nwhile True:\n"
        "    threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()"
    ),
    "memory_bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(10**8))",
    "memory_one_shot": "x = bytearray(10**11)",
    "huge_output": "import sys\nwhile True:\n    sys.stdout.write('10 ' * 100000)",
    "huge_stderr": "import sys\nwhile True:\n    sys.stderr.write('x' * 100000)",
    "deep_recursion": "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1) + 1\nprint(f(0))",
    "write_outside": "open({canary!r}, 'w').write('10')",
    "append_outside": "open({canary!r}, 'a').write('10')",
    "create_outside": "open({tmp!r} + '/evil.txt', 'w').write('x')\nopen('/tmp/evil_sandbox.txt', 'w').write('x')",
    "delete_outside": "import os\nos.remove({canary!r})",
    "rmtree_outside": "import shutil\nshutil.rmtree({tmp!r})",
    "rename_outside": "import os\nos.rename({canary!r}, {canary!r} + '.moved')",
    "symlink_escape": "import os\nos.symlink({canary!r}, 'link')\nopen('link', 'w').write('10')",
    "chmod_outside": "import os\nos.chmod({canary!r}, 0)",
    "read_outside": "print(open({canary!r}).read())",
    "read_env": "import os\nprint(os.environ.get({secret!r}, ''), dict(os.environ))",
    "read_parent_env": (
        "import os\nprint(open('/proc/%d/environ' % os.getppid(), 'rb').read())\n"
        "print(open('/proc/{pid}/environ', 'rb').read())"
    ),
    "scan_proc_env": (
        "import os\nfor p in os.listdir('/proc'):\n"
        "    try: print(open('/proc/%s/environ' % p, 'rb').read())\n"
        "    except Exception as e: print(e)"
    ),
    "error_with_env": "import os\nraise ValueError(str(dict(os.environ)))",
    "socket_connect": "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'hi')",
    "socket_udp": (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('127.0.0.1', {port}))"
    ),
    "socket_listen": "import socket\ns = socket.socket()\ns.bind(('0.0.0.0', 0))\ns.listen()",
    "kill_parent": "import os\nos.kill(os.getppid(), 9)",
    "kill_test_process": "import os\nos.kill({pid}, 9)",
    "kill_everything": "import os\nos.kill(-1, 9)",
    "killpg": "import os\nos.killpg(0, 9)",
    "pthread_kill": "import signal, threading\nsignal.pthread_kill(threading.main_thread().ident, 9)",
    "ctypes": "import ctypes\nctypes.CDLL(None).kill({pid}, 9)",
    "exit_before": "import sys\nsys.exit(0)",
    "os_exit_before": "import os\nos._exit(0)",
    "raise_systemexit": "raise SystemExit",
    "override_print": "import builtins\nbuiltins.print = lambda *a, **k: None\nprint(10)",
    "print_to_stderr": "import sys\nsys.stderr.write('10\\n')",
}


@pytest.mark.parametrize("name", sorted(STDIN_HOSTILE))
def test_hostile_stdin_program_gets_zero_and_host_survives(name, host):
    src = STDIN_HOSTILE[name].format(
        port=host["port"], pid=host["pid"], tmp=str(host["tmp"]), canary=str(host["canary"]), secret=SECRET_ENV
    )
    result, elapsed = run(src, stdin_gt(time_limit=0.5))
    check_hostile(result, elapsed, limit=15)
    assert result.get("sandbox_error") is None, result["sandbox_error"]
    assert os.getpid() == host["pid"]


KERNEL_ONLY = [
    "fork_bomb",
    "thread_bomb",
    "memory_bomb",
    "write_outside",
    "create_outside",
    "delete_outside",
    "rmtree_outside",
    "symlink_escape",
    "read_outside",
    "read_parent_env",
    "scan_proc_env",
    "socket_connect",
    "socket_udp",
    "kill_parent",
    "kill_test_process",
    "kill_everything",
    "killpg",
    "subprocess",
]
KERNEL_EXTRA = {
    "ctypes_execve": "import ctypes\nlibc = ctypes.CDLL(None)\nprint(libc.execve(b'/bin/sh', None, None))",
    "os_exec": "import os\nos.execv('/bin/sh', ['sh', '-c', 'echo 10'])",
    "ctypes_kill": "import ctypes\nprint(ctypes.CDLL(None).kill({pid}, 9))",
    "setuid_root": "import os\nos.setuid(0)\nprint(10)",
    "realtime_priority": "import os\nos.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))\nprint(10)",
    "renice": "import os\nos.nice(-10)\nprint(10)",
    "raise_rlimits": "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\nprint(10)",
}


@pytest.mark.parametrize("name", KERNEL_ONLY + sorted(KERNEL_EXTRA))
def test_kernel_layers_alone_contain_hostile_programs(name, host):
    if not kernel_layers_available():
        pytest.skip(f"kernel layers not available on this machine: {layers()}")
    src = (STDIN_HOSTILE.get(name) or KERNEL_EXTRA[name]).format(
        port=host["port"], pid=host["pid"], tmp=str(host["tmp"]), canary=str(host["canary"]), secret=SECRET_ENV
    )
    result, elapsed = run(src, stdin_gt(time_limit=0.5), limits=UNGUARDED)
    check_hostile(result, elapsed, limit=15)
    assert result.get("sandbox_error") is None, result["sandbox_error"]  # even the harness survived


# --- faking a pass ---------------------------------------------------------------------------------------

FUNCTIONAL_HOSTILE = {
    "eq_always_true": (
        "class Yes:\n    def __eq__(self, other): return True\n"
        "    def __ne__(self, other): return False\n"
        "def add(a, b):\n    return Yes()"
    ),
    "int_subclass_eq": (
        "class Int(int):\n    def __eq__(self, other): return True\n    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return Int(0)"
    ),
    "monkeypatch_json": (
        "import json\njson.dumps = lambda *a, **k: 'true'\njson.loads = lambda *a, **k: True\n"
        "json.JSONEncoder.encode = lambda self, o: 'true'\ndef add(a, b):\n    return 0"
    ),
    "exit_in_function": "def add(a, b):\n    import sys\n    sys.exit(0)",
    "os_exit_in_function": "def add(a, b):\n    import os\n    os._exit(0)",
    "exit_before_tests": "import sys\nsys.exit(0)\ndef add(a, b):\n    return a + b",
    "os_exit_before_tests": "import os\nos._exit(0)\ndef add(a, b):\n    return a + b",
    "print_expected_shape": "def add(a, b):\n    print(7)\n    return None",
    "override_builtins": (
        "import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.len = lambda x: 0\n"
        "builtins.print = lambda *a, **k: None\ndef add(a, b):\n    return -1"
    ),
    "return_generator": "def add(a, b):\n    yield a + b",
    "infinite_loop": "def add(a, b):\n    while True: pass",
}


@pytest.mark.parametrize("name", sorted(FUNCTIONAL_HOSTILE))
def test_functional_fakes_get_zero(name, host):
    result, elapsed = run(FUNCTIONAL_HOSTILE[name], functional_gt(time_limit=0.5))
    check_hostile(result, elapsed, limit=15)


HE_TEST = """
import math

def check(candidate):
    assert candidate(1.5, 1.5) == 3.0
    assert abs(candidate(1, 2) - 3.0) < 1e-6
    assert math.isclose(candidate(0.1, 0.2), 0.3)
    assert isinstance(candidate(2, 2), (int, float))
# SECRET-MARKER-4711: the expected answer is 987654321
check(add)
"""

CODE_HOSTILE = {
    "eq_always_true": (
        "class Yes(float):\n    def __eq__(self, o): return True\n"
        "    def __ne__(self, o): return False\n"
        "    def __lt__(self, o): return True\n    def __sub__(self, o): return Yes()\n"
        "    def __abs__(self): return 0\ndef add(a, b):\n    return Yes(-1)"
    ),
    "opaque_eq_object": (
        "class Yes:\n    def __eq__(self, o): return True\n    __hash__ = None\ndef add(a, b):\n    return Yes()"
    ),
    "patch_builtins": (
        "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n"
        "builtins.AssertionError = type('Nope', (Exception,), {{}})\ndef add(a, b):\n    return -1"
    ),
    "shadow_builtins": "def abs(x):\n    return 0\ndef isinstance(*a):\n    return True\ndef add(a, b):\n    return -1",
    "patch_math": "import math\nmath.isclose = lambda *a, **k: True\ndef add(a, b):\n    return -1",
    "define_check": "def check(candidate):\n    pass\ndef add(a, b):\n    return -1",
    "exit_before_tests": "import sys\nsys.exit(0)\ndef add(a, b):\n    return a + b",
    "os_exit_before_tests": "import os\nos._exit(0)\ndef add(a, b):\n    return a + b",
    "exit_in_function": "def add(a, b):\n    raise SystemExit(0)",
    "os_exit_in_function": "import os\ndef add(a, b):\n    os._exit(0)",
    "monkeypatch_json": "import json\njson.loads = json.dumps = lambda *a, **k: True\ndef add(a, b):\n    return -1",
    "settrace_skip_asserts": (
        "import sys\ndef tracer(frame, event, arg):\n    return None\nsys.settrace(tracer)\n"
        "def add(a, b):\n    return -1"
    ),
    "steal_the_test": (
        "import gc, sys, re\n"
        "def _find():\n"
        "    pool = [o for o in gc.get_objects() if isinstance(o, str)]\n"
        "    for f in sys._current_frames().values():\n"
        "        while f is not None:\n"
        "            pool += [v for v in f.f_locals.values() if isinstance(v, str)]\n"
        "            pool += [v for v in f.f_globals.values() if isinstance(v, str)]\n"
        "            f = f.f_back\n"
        "    for s in pool:\n"
        "        m = re.search(r'MARKER-4711: the expected answer is (\\d+)', s)\n"
        "        if m and 'SECRET' in s:\n"
        "            return int(m.group(1))\n"
        "    return None\n"
        "FOUND = _find()\n"
        "def add(a, b):\n"
        "    if FOUND is not None:\n"
        "        return FOUND\n"
        "    return -1"
    ),
    "infinite_loop": "def add(a, b):\n    while True: pass",
}


@pytest.mark.parametrize("name", sorted(CODE_HOSTILE))
def test_code_fakes_get_zero(name, host):
    result, elapsed = run(CODE_HOSTILE[name].replace("{{}}", "{}"), code_gt(HE_TEST, time_limit=1.0))
    check_hostile(result, elapsed, limit=15)


def test_test_script_is_not_in_the_solution_process(host):
    """Stronger version of steal_the_test: if the marker were findable, this would score 1."""
    src = CODE_HOSTILE["steal_the_test"]
    script = "# SECRET-MARKER-4711: the expected answer is 987654321\nassert add(1, 2) == 987654321\n"
    result, _ = run(src, code_gt(script))
    assert result["score"] == 0.0
    # control: with the marker in the solution's own memory the same program does find it
    leaked = "LEAK = '# SECRET-MARKER-4711: the expected answer is 987654321'\n" + src
    assert run(leaked, code_gt(script))[0]["score"] == 1.0


def test_correct_programs_still_pass_with_all_layers(host):
    stdin_ok = "import sys\nn = int(sys.stdin.buffer.read())\nprint(n * 2)"
    assert run(stdin_ok, stdin_gt())[0]["score"] == 1.0
    assert run("def add(a, b):\n    return a + b", functional_gt())[0]["score"] == 1.0
    assert run("def add(a, b):\n    return a + b", code_gt(HE_TEST))[0]["score"] == 1.0


def test_parallel_hostile_batch_does_not_cross_contaminate(host):
    """Bombs next to honest programs in one batch: the honest ones still pass."""
    honest = (fence("print(int(input()) * 2)"), stdin_gt())
    items = []
    for name in ("fork_bomb", "memory_bomb", "infinite_loop", "thread_bomb", "kill_everything", "huge_output"):
        items.append((fence(STDIN_HOSTILE[name]), stdin_gt(time_limit=0.5)))
        items.append(honest)
    t0 = time.monotonic()
    results = cv.score_many(items, num_workers=2)
    assert time.monotonic() - t0 < 40
    assert [r["score"] for r in results] == [0.0, 1.0] * 6
    assert all(SECRET_VALUE not in r["feedback"] for r in results)


def test_layers_reported(host):
    info = layers()
    assert info.get("error") is None
    assert "rlimits" in info and info["rlimits"].get("RLIMIT_AS") == sandbox.DEFAULT_LIMITS.memory_mb << 20
    if os.geteuid() == 0 and sys.platform.startswith("linux"):
        assert info.get("uid") and UID_RANGE[0] <= info["uid"] < UID_RANGE[1]
