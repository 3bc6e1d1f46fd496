"""Run untrusted Python in a separate, locked-down process tree (never ``exec`` in the trainer).

Two halves live in this file:

* the **parent side** (``run_tests``), imported by the trainer / reward workers; and
* the **harness**, this same file run as a script: ``python -I -S sandbox.py JOBDIR RESULT_FD``.

Process tree and trust::

    trainer (parent) ──Popen, new session──> harness U (trusted code, sandboxed) ──fork per test──> C (untrusted)

The harness U never executes solution code. It locks itself down (below), then forks one child C per test;
only C runs the solution. Verdicts are never computed in a process that ran solution code:

* ``stdin`` tests: C's stdout goes to a size-capped file; U forwards it; the **parent** compares it.
* ``functional`` tests: C calls the function and writes the JSON of the return value; the **parent**
  compares it with the expected value (C never sees expected outputs).
* ``code`` tests (assert scripts): C serves the solution's functions over a pipe; U itself runs the
  assert script with proxies that call into C and get back *plain data* only (ints, strs, lists, ...,
  or opaque handles that are never equal to anything but themselves), so overriding ``__eq__``,
  builtins, ``print``, ``json`` or the comparison inside C cannot change the verdict. The script is
  read by U only after C was forked, so C cannot read the expected values from memory.

A child that exits early (``sys.exit(0)``, ``os._exit(0)``) produces no result / no output: it fails.

Lock-down of U (and so of every C), applied before any solution code exists in the process:

* separate process, own session/process group (``start_new_session``), scrubbed environment
  (``LANG``/``HOME``/``TMPDIR`` only, ``-I -S``), own working directory;
* as root: new mount + network namespace (no network interfaces but a down loopback), a size-capped
  tmpfs as the working directory, the Python installation re-exposed read-only if it sits in a
  directory the sandbox user cannot enter (e.g. ``/root``), then ``setresuid`` to a fresh unprivileged
  uid (so RLIMIT_NPROC counts only this sandbox, and no capabilities remain);
  not root: a user+mount+network namespace when the kernel allows it (same tmpfs and no network);
* rlimits: RLIMIT_AS (memory), RLIMIT_FSIZE (biggest file), RLIMIT_NOFILE, RLIMIT_CORE 0, RLIMIT_NPROC,
  RLIMIT_CPU (per test in C);
* ``PR_SET_NO_NEW_PRIVS`` and **Landlock** (when the kernel has it): writes only inside the working
  directory, reads only the Python installation / system libraries, no ``execve`` of anything, no TCP
  bind/connect (ABI >= 4), no signals to processes outside the sandbox and no abstract unix sockets
  (ABI >= 6);
* in C, an audit hook (``sys.addaudithook``) and deleted ``os`` functions as a second layer: no
  fork/exec/spawn/system/Popen, no sockets, no ``ctypes``, no kill except of itself, no writes outside
  the working directory, no reads of ``/proc/<other pid>``.

The parent kills the whole process group at the deadline, and (root mode) every process of the
sandbox uid; U itself kills everything of its uid / Landlock domain when it finishes.
"""

import _json
import _signal
import os
import sys

__all__ = ["DEFAULT_LIMITS", "SandboxLimits", "SandboxResult", "run_tests", "sandbox_layers"]

SOLUTION_FILE = "solution.py"
CONTEXT_FILE = "context.py"
TEST_FILE = "test.py"
_FORMAT_VERSION = 1

# =====================================================================================================
# Harness (runs inside the sandbox; this module is executed as a script with `python -I -S`).
# Only the standard library; everything the children may touch is reached through module globals that
# the child clears (``_SYS``) before solution code runs.
# =====================================================================================================

_SYS = None  # ctypes handles (libc); dropped in every child before solution code runs
_LANDLOCK_ABI = 0  # what _setup_sandbox applied

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE, _MS_RDONLY = (
    2, 4, 32, 4096, 8192, 16384, 1 << 18, 1)
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP = 1, 38, 24

# landlock (same syscall numbers on every architecture)
_LL_CREATE, _LL_ADD_RULE, _LL_RESTRICT = 444, 445, 446
_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1, 2, 4, 8
_LL_TRUNCATE, _LL_IOCTL_DEV = 1 << 14, 1 << 15

_BLOCKED_IMPORTS = frozenset({"ctypes", "_ctypes", "cffi", "_cffi_backend", "_posixsubprocess", "subprocess",
                              "_xxsubinterpreters", "_xxinterpchannels", "_testcapi", "_testinternalcapi",
                              "multiprocessing", "_multiprocessing", "pty"})
_DENIED_EVENTS = frozenset({"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                            "subprocess.Popen", "pty.spawn", "os.killpg", "builtins.breakpoint",
                            "cpython.PyInterpreterState_New", "os.startfile", "webbrowser.open"})
_PATH_EVENTS = {  # event -> indexes of the path arguments that must stay inside the working directory
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
    "os.chflags": (0,), "os.lchflags": (0,), "os.lchmod": (0,), "os.lchown": (0,), "os.link": (0, 1),
    "os.rename": (0, 1), "os.symlink": (1,), "os.truncate": (0,), "os.utime": (0,), "os.mkfifo": (0,),
    "os.mknod": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copymode": (1,),
    "shutil.copystat": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1), "os.setxattr": (0,),
    "os.removexattr": (0,),
}
_DELETED_OS_FUNCS = ("fork", "forkpty", "system", "popen", "execv", "execve", "execl", "execle", "execlp",
                     "execlpe", "execvp", "execvpe", "fexecve", "spawnv", "spawnve", "spawnvp", "spawnvpe",
                     "spawnl", "spawnle", "spawnlp", "spawnlpe", "posix_spawn", "posix_spawnp", "kill",
                     "killpg", "setsid", "setpgid", "setpgrp", "register_at_fork", "pidfd_open", "chroot")


# JSON through the C accelerator only: `import json` would pull in `re` and `enum` (~20 ms per sandbox).
class _ScanContext:
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__
    memo: dict = {}


_SCANNER = _json.make_scanner(_ScanContext())


def _no_default(o):
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _jdumps(obj, default=_no_default) -> str:
    encoder = _json.make_encoder({}, default, _json.encode_basestring_ascii, None, ":", ",", False, False, True)
    return "".join(encoder(obj, 0))


def _jloads(text):
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    stripped = text.strip()
    try:
        obj, end = _SCANNER(stripped, 0)
        if end == len(stripped):
            return obj
    except Exception:  # noqa: BLE001 - the bare C scanner reports errors badly; let json explain
        pass
    import json

    return json.loads(text)


class _Out:
    """JSON lines to the parent on the result pipe."""

    def __init__(self, fd: int):
        self.fd = fd

    def send(self, record: dict) -> None:
        data = (_jdumps(record) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]


# ---------------------------------------------------------------------------------------------------
# Kernel-level lock-down (in U, before any solution code exists)


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return ctypes, libc


def _check(ctypes, rc, what):
    if rc < 0 or (rc != 0 and what.startswith("!")):
        err = ctypes.get_errno()
        raise OSError(err, f"{what.lstrip('!')}: {os.strerror(err)}")
    return rc


def _mount(ctypes, libc, src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    rc = libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    _check(ctypes, rc, f"!mount {target}")


def _expose_paths(ctypes, libc, paths, stage_root, uid):
    """Make the Python installation readable by ``uid`` when it sits below a directory it cannot enter.

    In our private mount namespace: bind each needed path aside, cover the blocking ancestor with an
    empty tmpfs (hiding everything else in it, e.g. the rest of /root) and move the binds back in place.
    """
    groups: dict[str, set] = {}
    for p in paths:
        p = os.path.realpath(p)
        if not os.path.isdir(p):
            continue
        cur = ""
        for part in p.strip("/").split("/"):
            cur += "/" + part
            if not os.stat(cur).st_mode & 0o001:
                if cur != p:
                    groups.setdefault(cur, set()).add(p)
                break
    exposed = []
    for k, (ancestor, needed) in enumerate(sorted(groups.items())):
        needed = sorted(p for p in needed if not any(p != q and p.startswith(q + "/") for q in needed))
        staged = []
        for j, p in enumerate(needed):
            stage = os.path.join(stage_root, f".stage{k}_{j}")
            os.mkdir(stage, 0o700)
            _mount(ctypes, libc, p, stage, None, _MS_BIND | _MS_REC)
            staged.append((stage, p))
        _mount(ctypes, libc, "tmpfs", ancestor, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
        for stage, p in staged:
            os.makedirs(p, mode=0o755, exist_ok=True)
            _mount(ctypes, libc, stage, p, None, _MS_MOVE)
            try:  # read-only view (best effort)
                _mount(ctypes, libc, None, p, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_REC)
            except OSError:
                pass
        exposed.append(ancestor)
    return exposed


def _landlock(ctypes, libc, ro_paths, rw_paths, ro_files, rw_files) -> int:
    """Apply a Landlock ruleset to this process (and its future children); returns the ABI, 0 if none."""
    import stat as _stat

    syscall = libc.syscall
    abi = syscall(_LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return 0

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    fs = (1 << 13) - 1
    if abi >= 2:
        fs |= 1 << 13  # REFER
    if abi >= 3:
        fs |= _LL_TRUNCATE
    if abi >= 5:
        fs |= _LL_IOCTL_DEV
    attr = RulesetAttr(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 24 if abi >= 6 else (16 if abi >= 4 else 8)
    rfd = _check(ctypes, syscall(_LL_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)),
                 "landlock_create_ruleset")
    file_rights = (_LL_EXECUTE | _LL_WRITE_FILE | _LL_READ_FILE | _LL_TRUNCATE | _LL_IOCTL_DEV) & fs
    read = _LL_READ_FILE | _LL_READ_DIR
    rules = [(p, read) for p in ro_paths] + [(p, fs & ~_LL_EXECUTE) for p in rw_paths]
    rules += [(p, _LL_READ_FILE) for p in ro_files]
    rules += [(p, _LL_READ_FILE | _LL_WRITE_FILE | _LL_TRUNCATE | _LL_IOCTL_DEV) for p in rw_files]
    try:
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                access &= fs
                if not _stat.S_ISDIR(os.fstat(fd).st_mode):
                    access &= file_rights
                rule = PathBeneath(access, fd)
                _check(ctypes, syscall(_LL_ADD_RULE, ctypes.c_int(rfd), ctypes.c_int(1), ctypes.byref(rule),
                                       ctypes.c_uint32(0)), f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        _check(ctypes, libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "!prctl(NO_NEW_PRIVS)")
        _check(ctypes, syscall(_LL_RESTRICT, ctypes.c_int(rfd), ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(rfd)
    return abi


def _landlock_scope_only(ctypes, libc) -> None:
    """A nested Landlock domain that only scopes signals and abstract unix sockets (ABI >= 6).

    Applied in every test child: it can then signal neither the harness nor the other tests."""

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    attr = RulesetAttr(0, 0, 3)
    rfd = _check(ctypes, libc.syscall(_LL_CREATE, ctypes.byref(attr), ctypes.c_size_t(24), ctypes.c_uint32(0)),
                 "landlock_create_ruleset")
    try:
        _check(ctypes, libc.syscall(_LL_RESTRICT, ctypes.c_int(rfd), ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(rfd)


def _drop_capabilities(ctypes, libc):
    """Empty the capability sets and the bounding set (used when we cannot switch to another uid)."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    for cap in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:
            break
    _check(ctypes, libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()), "!capset")


def _world_accessible(path: str) -> bool:
    """Can an unrelated uid enter every directory down to ``path`` and read it?"""
    try:
        path = os.path.realpath(path)
        cur = "/"
        for part in [""] + path.strip("/").split("/"):
            cur = os.path.join(cur, part) if part else cur
            if not os.stat(cur).st_mode & 0o001:
                return False
        return bool(os.stat(path).st_mode & 0o004)
    except OSError:
        return False


def _count_user_tasks(uid: int) -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                status = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [str(uid)]:
            n += int(fields.get("Threads", "1").strip() or 1)
    return n


def _setup_sandbox(cfg: dict) -> dict:
    """Lock this process down as described in the module docstring; returns what was applied."""
    global _SYS, _LANDLOCK_ABI
    import resource

    layers: dict = {"errors": []}
    ctypes, libc = _libc()
    _SYS = (ctypes, libc)
    workdir, jobdir = cfg["workdir"], cfg["jobdir"]
    is_root = os.geteuid() == 0
    uid, gid = cfg.get("uid"), cfg.get("gid")
    size_opt = f"size={int(cfg['workdir_mb'])}m"

    namespaces = False
    if not cfg.get("namespaces", True):
        pass
    elif is_root:
        try:
            _check(ctypes, libc.unshare(ctypes.c_int(_CLONE_NEWNS | _CLONE_NEWNET)), "!unshare")
            namespaces = True
        except OSError as exc:
            layers["errors"].append(f"namespaces: {exc}")
    elif cfg.get("userns", True):
        try:
            real_uid, real_gid = os.getuid(), os.getgid()
            _check(ctypes, libc.unshare(ctypes.c_int(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWNET)), "!unshare")
            for name, text in (("setgroups", "deny"), ("uid_map", f"{real_uid} {real_uid} 1"),
                               ("gid_map", f"{real_gid} {real_gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            namespaces = True
            uid, gid = real_uid, real_gid
        except OSError as exc:
            layers["errors"].append(f"user namespace: {exc}")
    layers["netns"] = layers["mountns"] = namespaces
    layers["tmpfs"] = False
    layers["exposed"] = []
    if namespaces:
        try:
            _mount(ctypes, libc, None, "/", None, _MS_REC | _MS_PRIVATE)
            owner = f",uid={uid},gid={gid}" if uid is not None else ""
            _mount(ctypes, libc, "tmpfs", workdir, "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode=0700,{size_opt}{owner}")
            layers["tmpfs"] = cfg["workdir_mb"]
            if is_root and uid is not None:
                layers["exposed"] = _expose_paths(ctypes, libc, cfg["read_paths"], jobdir, uid)
        except OSError as exc:
            layers["errors"].append(f"mounts: {exc}")
    os.chdir(workdir)

    # rlimits (hard == soft: an unprivileged process cannot raise them again)
    mib = 1 << 20
    limits = {
        "RLIMIT_AS": int(cfg["memory_mb"]) * mib,
        "RLIMIT_FSIZE": int(cfg["output_mb"]) * mib,
        "RLIMIT_NOFILE": int(cfg["nofile"]),
        "RLIMIT_CORE": 0,
        "RLIMIT_CPU": int(cfg["cpu_total"]),
    }
    drop_uid = is_root and uid is not None and uid != 0
    if drop_uid and not all(_world_accessible(p) for p in cfg["read_paths"] if os.path.exists(p)):
        # e.g. root in a container without CAP_SYS_ADMIN and Python under /root: another uid could not
        # even import the standard library; stay uid 0, but without any capability (below)
        layers["errors"].append("python installation not readable by another uid: kept uid 0, dropped capabilities")
        drop_uid = False
        os.chown(workdir, 0, 0)
    if drop_uid:
        limits["RLIMIT_NPROC"] = int(cfg["nproc"])
    else:  # NPROC counts every task of this uid: allow what exists now plus a small margin
        try:
            limits["RLIMIT_NPROC"] = _count_user_tasks(os.getuid()) + int(cfg["nproc"])
        except OSError:
            pass
    applied = {}
    for name, value in limits.items():
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
            applied[name] = value
        except (ValueError, OSError) as exc:
            layers["errors"].append(f"{name}: {exc}")
    layers["rlimits"] = applied

    layers["uid"] = None
    if drop_uid:
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            layers["uid"] = uid
        except OSError as exc:
            layers["errors"].append(f"setuid: {exc}")
    if (is_root and layers["uid"] is None) or (not is_root and namespaces):
        try:
            _drop_capabilities(ctypes, libc)
            layers["capabilities_dropped"] = True
        except OSError as exc:
            layers["errors"].append(f"capabilities: {exc}")

    layers["landlock"] = 0
    if cfg.get("landlock", True):
        try:
            ro_dirs = list(cfg["read_paths"]) + ["/usr", "/lib", "/lib64", "/lib32", "/libx32",
                                                 "/sys/devices/system/cpu"]
            ro_files = ["/etc/ld.so.cache", "/etc/localtime", "/dev/urandom", "/dev/random", "/dev/zero"]
            layers["landlock"] = _landlock(ctypes, libc, ro_dirs, [workdir], ro_files, ["/dev/null"])
        except OSError as exc:
            layers["errors"].append(f"landlock: {exc}")
    if not layers["landlock"]:
        try:
            _check(ctypes, libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "!prctl(NO_NEW_PRIVS)")
        except OSError as exc:
            layers["errors"].append(str(exc))
    _LANDLOCK_ABI = layers["landlock"]
    # kill(-1) from inside reaches only this sandbox when it has its own uid or a Landlock signal scope
    layers["can_kill_all"] = bool(layers["uid"]) or layers["landlock"] >= 6
    return layers


# ---------------------------------------------------------------------------------------------------
# In the child C, right before solution code: second (Python-level) layer


def _audit_hook_factory(workdir: str):
    realpath, getpid, fspath, join, getcwd = os.path.realpath, os.getpid, os.fspath, os.path.join, os.getcwd
    wroot = realpath(workdir).rstrip("/") + "/"
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    denied, path_events, blocked_imports = _DENIED_EVENTS, _PATH_EVENTS, _BLOCKED_IMPORTS
    own_proc = (f"/proc/{getpid()}/", "/proc/self/", "/proc/thread-self/")

    def resolve(p):
        p = fspath(p)
        if isinstance(p, bytes):
            p = p.decode(errors="surrogateescape")
        if not p.startswith("/"):
            p = join(getcwd(), p)
        return realpath(p)

    def inside(p) -> bool:
        try:
            return (resolve(p) + "/").startswith(wroot)
        except Exception:
            return False

    def hook(event, args):
        if event in denied or event.startswith("socket."):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path = args[0]
            if isinstance(path, int) or path is None:
                return
            mode, flags = args[1], args[2]
            writing = bool(flags & write_flags) if isinstance(flags, int) else False
            if isinstance(mode, str) and any(c in mode for c in "wax+"):
                writing = True
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path!r}")
            try:
                full = resolve(path)
            except Exception:
                return
            if full.startswith("/proc/") and not full.startswith(own_proc):
                raise PermissionError(f"sandbox: reading {full} is not allowed")
        elif event in path_events:
            for i in path_events[event]:
                if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)) and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")
        elif event == "import":
            name = args[0] or ""
            if name.split(".")[0] in blocked_imports:
                raise ImportError(f"sandbox: import of {name} is not allowed")
        elif event == "os.kill":
            if args[0] != getpid():
                raise PermissionError("sandbox: signalling other processes is not allowed")
        elif event == "signal.pthread_kill":
            if args[1] != 0:
                raise PermissionError("sandbox: signal.pthread_kill is not allowed")

    return hook


def _lockdown(workdir: str, guard: bool = True) -> None:
    """Python-level layer in the child: drop dangerous modules/functions, install the audit hook.

    ``guard=False`` (tests only) leaves just the kernel-level layers, to show that they hold alone."""
    global _SYS
    _SYS = None
    if not guard:
        return
    for name in list(sys.modules):
        if name.split(".")[0] in _BLOCKED_IMPORTS:
            del sys.modules[name]
    import posix

    for mod in (os, posix):
        for fname in _DELETED_OS_FUNCS:
            try:
                delattr(mod, fname)
            except AttributeError:
                pass
    sys.addaudithook(_audit_hook_factory(workdir))


def _child_fds(stdin_path: str | None, stdout_path: str | None, keep: tuple = ()) -> tuple:
    """Point fds 0/1/2 at the given files (or /dev/null); close everything else but ``keep``.

    Returns the new numbers of the ``keep`` fds (moved to 3, 4, ...)."""
    fd0 = os.open(stdin_path or "/dev/null", os.O_RDONLY | os.O_NOFOLLOW if stdin_path else os.O_RDONLY)
    if stdout_path:
        fd1 = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    else:
        fd1 = os.open("/dev/null", os.O_WRONLY)
    fd2 = os.open("/dev/null", os.O_WRONLY)
    moved = [os.dup(fd) for fd in keep]  # above every fd we still need
    for target, fd in ((0, fd0), (1, fd1), (2, fd2)):
        os.dup2(fd, target)
    out = []
    for i, fd in enumerate(moved):
        os.dup2(fd, 3 + i)
        out.append(3 + i)
    os.closerange(3 + len(out), 1 << 16)
    return tuple(out)


def _child_common(limits: dict, time_limit: float) -> None:
    import resource

    signal = _signal
    ctypes, libc = _SYS
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        os._exit(71)
    if _LANDLOCK_ABI >= 6:
        _landlock_scope_only(ctypes, libc)
    signal.setitimer(signal.ITIMER_REAL, 0)
    for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    soft = max(1, int(time_limit + 0.999)) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))


def _std_streams() -> None:
    import io

    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                                 encoding="utf-8", errors="replace")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                                   encoding="utf-8", errors="backslashreplace")
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                                   encoding="utf-8", errors="backslashreplace",
                                                   line_buffering=True)


def _format_exception(exc: BaseException, sources: dict, max_frames: int = 3) -> str:
    """``Traceback`` with only the solution's frames (at most ``max_frames``) and ``Type: message``."""
    try:
        name = type(exc).__name__
        try:
            message = str(exc)
        except Exception:
            message = "<unprintable message>"
        if len(message) > 500:
            message = message[:500] + " ..."
        if isinstance(exc, SyntaxError) and exc.filename in sources:
            line = (exc.text or "").rstrip("\n")
            return (f'  File "{exc.filename}", line {exc.lineno}\n    {line.strip()}\n'
                    f"{name}: {exc.msg}")
        frames = []
        tb = exc.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_filename == SOLUTION_FILE:
                frames.append((code.co_filename, tb.tb_lineno, code.co_name))
            tb = tb.tb_next
        lines = []
        if frames:
            lines.append("Traceback (most recent call last):")
            for filename, lineno, func in frames[-max_frames:]:
                lines.append(f'  File "{filename}", line {lineno}, in {func}')
                src = sources.get(filename, "").splitlines()
                if 0 < lineno <= len(src):
                    lines.append("    " + src[lineno - 1].strip()[:200])
        if name == "MemoryError" and not message:
            message = "out of memory (the sandbox allows a limited address space)"
        lines.append(f"{name}: {message}" if message else name)
        return "\n".join(lines)
    except Exception:  # the solution may have broken anything; never fail here
        return "Error (could not format the exception)"


def _exec_solution(job: dict, module_name: str) -> dict:
    module = type(sys)(module_name)
    g = module.__dict__
    g["__file__"] = SOLUTION_FILE
    g["__builtins__"] = __builtins__ if isinstance(__builtins__, dict) else __builtins__.__dict__
    sys.modules[module_name] = module
    if module_name != "__main__":
        sys.modules["__main__"] = module
    sys.argv = [SOLUTION_FILE]
    if job.get("context"):
        exec(compile(job["context"], CONTEXT_FILE, "exec"), g)
    exec(compile(job["code"], SOLUTION_FILE, "exec"), g)
    return g


def _finish_program() -> None:
    """What a normal interpreter exit would do: join non-daemon threads, run atexit, flush streams."""
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            main = threading.main_thread()
            for t in threading.enumerate():
                if t is not main and not t.daemon:
                    t.join()
        except Exception:
            pass
    try:
        import atexit

        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr, sys.__stdout__):
        try:
            stream.flush()
        except BaseException:
            pass


def _json_default(o):
    if isinstance(o, (set, frozenset)):
        try:
            return sorted(o)
        except TypeError:
            return list(o)
    if type(o).__module__ == "numpy" and hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (bytes, bytearray)):
        return bytes(o).decode("utf-8", "replace")
    if type(o).__name__ in ("Decimal", "Fraction"):
        return float(o)
    raise TypeError(f"the return value contains a {type(o).__name__}, which is not JSON serializable")


def _locate_function(g: dict, fn_name: str | None):
    function_type = type(_locate_function)
    sol = g.get("Solution")
    if fn_name:
        if isinstance(sol, type) and hasattr(sol, fn_name):
            return getattr(sol(), fn_name)
        fn = g.get(fn_name)
        if callable(fn):
            return fn
        raise NameError(f"the solution does not define a function named {fn_name!r}")
    for value in list(g.values()):
        if isinstance(value, function_type) and value.__code__.co_filename == SOLUTION_FILE:
            return value
    raise NameError("the solution does not define any function")


def _child_process_test(job: dict, mode: str, test, paths: dict) -> None:
    """Run one stdin/functional test in this (forked) child; writes a JSON record to the result file."""
    (res_fd,) = _child_fds(paths["in"] if mode == "stdin" else None,
                           paths["out"] if mode == "stdin" else None,
                           keep=(os.open(paths["res"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                                         0o600),))
    _child_common(job["limits"], job["time_limit"])
    _std_streams()
    _lockdown(job["workdir"], job["limits"].get("python_guard", True))
    sources = {SOLUTION_FILE: job["code"], CONTEXT_FILE: job.get("context") or ""}
    write = os.write
    record: dict
    try:
        g = _exec_solution(job, "__main__" if mode == "stdin" else "solution")
        if mode == "functional":
            fn = _locate_function(g, job.get("fn_name"))
            result = fn(*test.get("args", []), **test.get("kwargs", {}))
            record = {"status": "ok", "result": _jdumps(result, default=_json_default)}
        else:
            _finish_program()
            record = {"status": "ok"}
    except SystemExit as exc:
        code = exc.code
        if mode == "stdin" and (code is None or code == 0):
            _finish_program()
            record = {"status": "ok"}
        elif mode == "stdin":
            _finish_program()
            record = {"status": "error", "error": f"the program exited with status {code!r}"}
        else:
            record = {"status": "error", "error": f"the program called exit({code!r}) instead of returning a value"}
    except BaseException as exc:  # noqa: BLE001 - everything the solution raises is a runtime error
        record = {"status": "error", "error": _format_exception(exc, sources)}
        if mode == "stdin":
            _finish_program()
    try:
        data = _jdumps(record).encode()
    except BaseException:
        data = b'{"status":"error","error":"the result could not be encoded"}'
    try:
        view = memoryview(data)
        while view:
            view = view[write(res_fd, view):]
    except BaseException:
        pass
    os._exit(0)


# ---------------------------------------------------------------------------------------------------
# Tagged encoding of plain values between C (solution) and U (assert script), for `code` tests.
# Primitives are JSON scalars; everything else is a list whose first element is a tag.


def _enc_plain(x, handles=None, depth=0):
    """Encode ``x``; objects that are not plain data become handles (C side) or raise (U side)."""
    if depth > 200:
        raise ValueError("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if isinstance(x, bool):
        return bool(x)
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        x = float(x)
        return x if x == x and x not in (float("inf"), float("-inf")) else ["f", repr(x)]
    if isinstance(x, str):
        return str(x)
    d = depth + 1
    if isinstance(x, list):
        return ["l", [_enc_plain(v, handles, d) for v in x]]
    if isinstance(x, tuple):
        return ["t", [_enc_plain(v, handles, d) for v in x]]
    if isinstance(x, frozenset):
        return ["fs", [_enc_plain(v, handles, d) for v in x]]
    if isinstance(x, set):
        return ["s", [_enc_plain(v, handles, d) for v in x]]
    if isinstance(x, dict):
        return ["d", [[_enc_plain(k, handles, d), _enc_plain(v, handles, d)] for k, v in x.items()]]
    if isinstance(x, bytearray):
        return ["ba", bytes(x).hex()]
    if isinstance(x, bytes):
        return ["b", bytes(x).hex()]
    if isinstance(x, complex):
        return ["c", [repr(x.real), repr(x.imag)]]
    name = t.__name__
    module = getattr(t, "__module__", "")
    if module == "decimal" and name == "Decimal":
        return ["dec", str(x)]
    if module == "fractions" and name == "Fraction":
        return ["frac", [int(x.numerator), int(x.denominator)]]
    if module == "numpy" and hasattr(x, "tolist"):
        return _enc_plain(x.tolist(), handles, d)
    if isinstance(x, _Remote):
        return ["h", object.__getattribute__(x, "_hid")]
    if handles is None:
        raise TypeError(f"cannot pass a {name} to the solution")
    hid = len(handles)
    handles.append(x)
    return ["h", hid, name, getattr(x, "__name__", name) if isinstance(getattr(x, "__name__", None), str) else name]


def _dec_plain(v, resolve_handle, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply")
    if v is None or type(v) in (bool, int, float, str):
        return v
    if type(v) is not list or not v or type(v[0]) is not str:
        raise ValueError("malformed value")
    tag, d = v[0], depth + 1
    p = v[1] if len(v) > 1 else None
    if tag == "l":
        return [_dec_plain(x, resolve_handle, d) for x in p]
    if tag == "t":
        return tuple(_dec_plain(x, resolve_handle, d) for x in p)
    if tag == "s":
        return {_dec_plain(x, resolve_handle, d) for x in p}
    if tag == "fs":
        return frozenset(_dec_plain(x, resolve_handle, d) for x in p)
    if tag == "d":
        return {_dec_plain(k, resolve_handle, d): _dec_plain(x, resolve_handle, d) for k, x in p}
    if tag == "b":
        return bytes.fromhex(p)
    if tag == "ba":
        return bytearray.fromhex(p)
    if tag == "c":
        return complex(float(p[0]), float(p[1]))
    if tag == "f":
        if p not in ("nan", "inf", "-inf"):
            raise ValueError("malformed float")
        return float(p)
    if tag == "dec":
        import decimal

        return decimal.Decimal(str(p))
    if tag == "frac":
        import fractions

        return fractions.Fraction(int(p[0]), int(p[1]))
    if tag == "h":
        return resolve_handle(v)
    raise ValueError(f"unknown tag {tag!r}")


class _LineIO:
    """Newline-delimited JSON over a pair of pipe fds."""

    def __init__(self, rfd: int, wfd: int, cap: int):
        self.rfd, self.wfd, self.cap, self.buf = rfd, wfd, cap, bytearray()

    def send(self, obj) -> None:
        view = memoryview((_jdumps(obj) + "\n").encode())
        while view:
            view = view[os.write(self.wfd, view):]

    def recv(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                return _jloads(line)
            if len(self.buf) > self.cap:
                raise ValueError("message too large")
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                raise EOFError("the solution process closed the connection")
            self.buf += chunk


def _child_code_server(job: dict, rfd: int, wfd: int) -> None:
    """C side of a `code` test: run the solution, then answer calls from U until it hangs up."""
    rfd, wfd = _child_fds(None, None, keep=(rfd, wfd))
    _child_common(job["limits"], job["time_limit"])
    _std_streams()
    _lockdown(job["workdir"], job["limits"].get("python_guard", True))
    io_ = _LineIO(rfd, wfd, 1 << 30)
    sources = {SOLUTION_FILE: job["code"], CONTEXT_FILE: job.get("context") or ""}
    handles: list = []

    def err(exc):
        return {"err": {"type": type(exc).__name__ if isinstance(type(exc).__name__, str) else "Exception",
                        "text": _format_exception(exc, sources)}}

    try:
        g = _exec_solution(job, "solution")
        names = {}
        for name, value in list(g.items()):
            if name.startswith("__"):
                continue
            mod = getattr(value, "__name__", None) if type(value).__name__ == "module" else None
            if mod:
                names[name] = ["m", mod]
                continue
            owner = getattr(value, "__module__", None)
            qual = getattr(value, "__qualname__", None)
            if isinstance(owner, str) and isinstance(qual, str) and owner not in ("solution", "__main__") \
                    and (callable(value) or isinstance(value, type)):
                names[name] = ["r", owner, qual]
                continue
            try:
                names[name] = ["v", _enc_plain(value, handles)]
            except Exception:
                pass
        reply = {"names": names}
    except BaseException as exc:  # noqa: BLE001
        reply = err(exc)
    io_.send(reply)
    if "err" in reply:
        os._exit(0)

    def resolve(v):
        return handles[int(v[1])]

    while True:
        try:
            msg = io_.recv()
        except BaseException:
            os._exit(0)
        try:
            op = msg["op"]
            target = handles[int(msg["h"])]
            mut = {}
            if op == "call":
                args = [_dec_plain(a, resolve) for a in msg["args"]]
                kwargs = {k: _dec_plain(a, resolve) for k, a in msg["kwargs"].items()}
                result = target(*args, **kwargs)
                for i, (a, raw) in enumerate(zip(args, msg["args"])):
                    if isinstance(a, (list, dict, set, bytearray)):
                        new = _enc_plain(a, handles)
                        if new != raw:
                            mut[str(i)] = new
            elif op == "getattr":
                result = getattr(target, msg["name"])
            elif op == "len":
                result = len(target)
            elif op == "iter":
                result = iter(target)
            elif op == "next":
                result = next(target)
            elif op == "getitem":
                result = target[_dec_plain(msg["key"], resolve)]
            elif op == "contains":
                result = _dec_plain(msg["key"], resolve) in target
            elif op == "bool":
                result = bool(target)
            elif op == "repr":
                result = repr(target)[:1000]
            elif op == "str":
                result = str(target)[:1000]
            else:
                raise ValueError(f"unknown op {op!r}")
            reply = {"ok": _enc_plain(result, handles), "mut": mut}
        except StopIteration:
            reply = {"stop": True}
        except BaseException as exc:  # noqa: BLE001
            reply = err(exc)
        try:
            io_.send(reply)
        except BaseException:
            os._exit(0)


# ---------------------------------------------------------------------------------------------------
# U side of `code` tests: the assert script runs here, against proxies


class _RemoteDied(Exception):
    pass


class _TestTimeout(BaseException):
    pass


_SAFE_EXCEPTIONS = None


def _exception_class(name: str):
    global _SAFE_EXCEPTIONS
    if _SAFE_EXCEPTIONS is None:
        import builtins

        _SAFE_EXCEPTIONS = {
            n: c for n, c in vars(builtins).items()
            if isinstance(c, type) and issubclass(c, Exception) and c is not StopIteration
        }
    return _SAFE_EXCEPTIONS.get(name, RuntimeError)


def _short(x, n=250) -> str:
    try:
        s = repr(x)
    except Exception:
        s = "<unprintable>"
    return s if len(s) <= n else s[: n - 3] + "..."


class _Conn:
    def __init__(self, io_: _LineIO):
        self.io = io_
        self.first_error = None  # (text, call description)
        self.last_call = None  # (description, result repr)
        self.in_flight = None  # description of the call waiting for its reply

    def current_input(self) -> str:
        if self.in_flight is not None:
            return self.in_flight
        return self.last_call[0] if self.last_call else ""

    def request(self, msg: dict, describe=None):
        try:
            self.io.send(msg)
            reply = self.io.recv()
        except (OSError, EOFError, ValueError) as exc:
            raise _RemoteDied(str(exc)) from None
        if not isinstance(reply, dict):
            raise _RemoteDied("malformed reply")
        if reply.get("stop"):
            raise StopIteration
        if "err" in reply:
            e = reply["err"] if isinstance(reply["err"], dict) else {}
            text = str(e.get("text", ""))[:3000]
            kind = str(e.get("type", "Exception"))
            if self.first_error is None:
                self.first_error = (text, describe() if describe else "")
            if kind in ("SystemExit", "KeyboardInterrupt", "GeneratorExit"):
                raise RuntimeError(f"the solution raised {kind}")
            raise _exception_class(kind)(text.splitlines()[-1] if text else kind)
        try:
            value = _dec_plain(reply.get("ok"), self.handle)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
            raise _RemoteDied(f"malformed reply: {exc}") from None
        return value, reply.get("mut") or {}

    def handle(self, v):
        name = v[3] if len(v) > 3 and isinstance(v[3], str) else (v[2] if len(v) > 2 else "object")
        return _Remote(self, int(v[1]), str(name)[:100])


class _Remote:
    """An object living in the solution's process; only plain data ever comes back from it."""

    __slots__ = ("_conn", "_hid", "_name")

    def __init__(self, conn, hid, name):
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_hid", hid)
        object.__setattr__(self, "_name", name)

    def _op(self, op, **kw):
        conn = object.__getattribute__(self, "_conn")
        return conn.request({"op": op, "h": object.__getattribute__(self, "_hid"), **kw})[0]

    def __call__(self, *args, **kwargs):
        conn = object.__getattribute__(self, "_conn")
        name = object.__getattribute__(self, "_name")

        def describe():
            parts = [_short(a, 200) for a in args] + [f"{k}={_short(v, 200)}" for k, v in kwargs.items()]
            return f"{name}({', '.join(parts)})"

        try:
            enc_args = [_enc_plain(a) for a in args]
            enc_kwargs = {str(k): _enc_plain(v) for k, v in kwargs.items()}
        except (TypeError, ValueError) as exc:
            raise TypeError(f"the test passes a value the sandbox cannot send: {exc}") from None
        conn.in_flight = describe()
        value, mut = conn.request({"op": "call", "h": object.__getattribute__(self, "_hid"), "args": enc_args,
                                   "kwargs": enc_kwargs}, describe)
        conn.in_flight = None
        for i, new in mut.items():  # in-place changes of list/dict/set arguments
            try:
                target, fresh = args[int(i)], _dec_plain(new, conn.handle)
                if isinstance(target, (list, bytearray)):
                    target[:] = fresh
                elif isinstance(target, (dict, set)):
                    target.clear()
                    target.update(fresh)
            except Exception:
                pass
        conn.last_call = (describe(), _short(value, 250))
        return value

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._op("getattr", name=name)

    def __setattr__(self, name, value):
        raise AttributeError("cannot set attributes on an object of the solution")

    def __len__(self):
        n = self._op("len")
        if type(n) is not int:
            raise TypeError("len() of a solution object did not return an int")
        return n

    def __iter__(self):
        it = self._op("iter")
        if not isinstance(it, _Remote):
            yield from it
            return
        while True:
            try:
                value = it._op("next")
            except StopIteration:
                return
            yield value

    def __getitem__(self, key):
        return self._op("getitem", key=_enc_plain(key))

    def __contains__(self, key):
        return self._op("contains", key=_enc_plain(key)) is True

    def __bool__(self):
        return self._op("bool") is True

    def __repr__(self):
        r = self._op("repr")
        return r if type(r) is str else "<object>"

    def __str__(self):
        r = self._op("str")
        return r if type(r) is str else "<object>"

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def __hash__(self):
        return id(self)


# Modules whose objects the tester may bind when the solution exports e.g. ``from math import gcd`` or
# ``import heapq``: the tester imports them itself (the real thing, not the solution's copy). Only modules
# without side effects on the process, so a solution cannot point a name the test calls at ``os._exit``.
_REF_MODULES = frozenset({
    "typing", "collections", "collections.abc", "_collections", "_collections_abc", "itertools", "functools",
    "_functools", "math", "cmath", "operator", "_operator", "heapq", "_heapq", "bisect", "_bisect", "re",
    "string", "fractions", "decimal", "_decimal", "_pydecimal", "statistics", "random", "dataclasses", "enum",
    "copy", "numbers", "array", "datetime", "_datetime", "json", "abc", "_abc", "textwrap", "unicodedata",
    "hashlib", "_hashlib", "_sha256", "_md5", "struct", "_struct", "calendar", "itertools", "graphlib",
    "numpy", "sortedcontainers",
})


def _importable(name: str) -> bool:
    return name in _REF_MODULES or name.split(".")[0] in ("numpy", "sortedcontainers")


def _run_test_script(job: dict, script: str, conn: _Conn, wall: float) -> dict:
    import builtins
    import importlib

    signal = _signal

    def on_alarm(signum, frame):
        raise _TestTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, wall)
    fn_name = job.get("fn_name")
    try:
        try:
            ready = conn.io.recv()
        except (OSError, EOFError, ValueError) as exc:
            raise _RemoteDied(str(exc)) from None
        if not isinstance(ready, dict) or "names" not in ready:
            e = ready.get("err", {}) if isinstance(ready, dict) else {}
            text = str(e.get("text", "the solution could not be loaded"))[:3000] if isinstance(e, dict) else ""
            return {"status": "error", "error": text, "where": "load"}
        ns: dict = {"__name__": "__main__", "__builtins__": dict(vars(builtins))}
        if job.get("context"):
            exec(compile(job["context"], CONTEXT_FILE, "exec"), ns)
        for name, desc in ready["names"].items():
            if not isinstance(name, str) or name.startswith("__") or not isinstance(desc, list) or not desc:
                continue
            if name != fn_name and (name in ns or hasattr(builtins, name)):
                continue  # trusted context and builtins win over what the solution defines
            try:
                if desc[0] == "m" and _importable(desc[1]):
                    ns[name] = importlib.import_module(desc[1])
                elif desc[0] == "r" and _importable(desc[1]):
                    obj = importlib.import_module(desc[1])
                    for part in desc[2].split("."):
                        obj = getattr(obj, part)
                    ns[name] = obj
                elif desc[0] == "v":
                    ns[name] = _dec_plain(desc[1], conn.handle)
            except Exception:
                continue
        exec(compile(script, TEST_FILE, "exec"), ns)
        return {"status": "ok", "passed": True}
    except _TestTimeout:
        return {"status": "timeout"}
    except _RemoteDied as exc:
        return {"status": "died", "error": str(exc)}
    except AssertionError as exc:
        if conn.first_error is not None:
            return {"status": "error", "error": conn.first_error[0], "input": conn.first_error[1]}
        line = ""
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == TEST_FILE:
                src = script.splitlines()
                if 0 < tb.tb_lineno <= len(src):
                    line = src[tb.tb_lineno - 1].strip()
            tb = tb.tb_next
        out = {"status": "wrong", "assertion": line[:500]}
        if conn.last_call:
            out["input"], out["output"] = conn.last_call
        return out
    except BaseException as exc:  # noqa: BLE001 - the test script failed some other way
        if conn.first_error is not None:
            return {"status": "error", "error": conn.first_error[0], "input": conn.first_error[1]}
        try:
            message = str(exc)[:500]
        except Exception:
            message = ""
        return {"status": "error", "error": f"{type(exc).__name__}: {message}" if message else type(exc).__name__,
                "input": conn.last_call[0] if conn.last_call else ""}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------------
# U: the test loops


def _signal_name(sig: int) -> str:
    for name in dir(_signal):
        if name.startswith("SIG") and not name.startswith(("SIG_", "SIGRT")) and getattr(_signal, name) == sig:
            return name
    return f"signal {sig}"


def _classify_exit(status: int, cpu: float, time_limit: float) -> tuple[str, str]:
    """(kind, text) from a wait status: ('exit', '') / ('timeout', ..) / ('crash', ..)."""
    signal = _signal

    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= time_limit):
            return "timeout", ""
        if sig == signal.SIGXFSZ:
            return "output_limit", ""
        hint = ""
        if sig == signal.SIGSEGV:
            hint = " (a segmentation fault, usually a stack overflow from very deep recursion)"
        elif sig == signal.SIGKILL:
            hint = " (killed; usually out of memory)"
        return "crash", f"the program was killed by {_signal_name(sig)}{hint}"
    if cpu > time_limit:
        return "timeout", ""
    return "exit", ""


def _wait_any(pidfds: dict, timeout: float) -> list:
    """pids (of ``pidfds``: pid -> pidfd or None) that have exited, waiting up to ``timeout`` s."""
    import select
    import time

    if all(fd is not None for fd in pidfds.values()):
        poller = select.poll()
        for fd in pidfds.values():
            poller.register(fd, select.POLLIN)
        by_fd = {fd: pid for pid, fd in pidfds.items()}
        events = poller.poll(max(0, int(timeout * 1000)))
        return [by_fd[fd] for fd, _ in events]
    end = time.monotonic() + timeout
    while True:
        done = []
        for pid in pidfds:
            try:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    done.append(pid)
            except ChildProcessError:
                done.append(pid)
        if done or time.monotonic() >= end:
            return done
        time.sleep(0.005)


def _read_capped(path: str, cap: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return b""
    try:
        chunks, total = [], 0
        while total < cap:
            chunk = os.read(fd, min(1 << 20, cap - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _run_forked_tests(job: dict, out: _Out) -> None:
    import time

    signal = _signal

    mode, tests, lim = job["mode"], job["tests"], job["limits"]
    tl = float(job["time_limit"])
    wall_limit = tl * float(lim["wall_factor"]) + float(lim["wall_slack"])
    fsize = int(lim["output_mb"]) << 20
    full_cap = int(lim.get("forward_output_chars", 2_000_000))
    pending = list(range(len(tests)))
    running: dict = {}  # pid -> (i, pidfd, t0, paths)
    timeouts, last_beat = 0, time.monotonic()
    workers = max(1, int(lim["test_workers"]))

    def start(i):
        paths = {k: f"{k}_{i}" for k in ("in", "out", "res")}
        if mode == "stdin":
            try:
                with open(paths["in"], "wb") as f:
                    f.write(str(tests[i]).encode("utf-8", "surrogateescape"))
            except OSError as exc:  # e.g. the working directory's size cap
                out.send({"type": "test", "i": i, "status": "error",
                          "error": f"the test input could not be written: {exc.strerror or exc}"})
                return
        try:
            pid = os.fork()
        except OSError as exc:  # e.g. the process limit, used up by a fork bomb of an earlier test
            out.send({"type": "test", "i": i, "status": "error",
                      "error": f"the test could not be started: {exc.strerror or exc}"})
            return
        if pid == 0:
            try:
                _child_process_test(job, mode, tests[i], paths)
            finally:
                os._exit(70)
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        running[pid] = (i, pidfd, time.monotonic(), paths)

    def finish(pid, killed_for_time):
        i, pidfd, t0, paths = running.pop(pid)
        _, status, usage = os.wait4(pid, 0)
        if pidfd is not None:
            os.close(pidfd)
        wall = time.monotonic() - t0
        cpu = usage.ru_utime + usage.ru_stime
        rec = {"type": "test", "i": i, "cpu": round(cpu, 4), "wall": round(wall, 4)}
        kind, text = _classify_exit(status, cpu, tl)
        raw_res = _read_capped(paths["res"], fsize)
        try:
            res = _jloads(raw_res) if raw_res else None
        except ValueError:
            res = None
        out_bytes = _read_capped(paths["out"], fsize + 1) if mode == "stdin" else b""
        for p in paths.values():
            try:
                os.unlink(p)
            except OSError:
                pass
        if killed_for_time or kind == "timeout":
            rec["status"] = "timeout"
        elif kind == "output_limit" or len(out_bytes) >= fsize:
            rec["status"] = "output_limit"
        elif kind == "crash":
            rec.update(status="error", error=text)
        elif not isinstance(res, dict):
            if mode == "stdin" and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                rec["status"] = "ok"  # the program ended itself with os._exit(0); its output decides
            elif mode == "stdin":
                rec.update(status="error", error=f"the program exited with status {os.WEXITSTATUS(status)}")
            else:
                rec.update(status="error", error="the program exited before returning a value")
        elif res.get("status") == "ok":
            rec["status"] = "ok"
            if mode == "functional":
                rec["result"] = str(res.get("result"))
        else:
            rec.update(status="error", error=str(res.get("error", ""))[:4000])
        if mode == "stdin":
            text_out = out_bytes.decode("utf-8", "replace")
            rec["output_head"] = text_out[:400]
            normalized = " ".join(text_out.split())
            if len(normalized) <= full_cap:
                rec["output"] = normalized
            else:
                import hashlib

                rec["output_sha256"] = hashlib.sha256(normalized.encode()).hexdigest()
        out.send(rec)
        return rec["status"]

    while pending or running:
        while pending and len(running) < workers and timeouts < int(lim["max_timeouts"]):
            start(pending.pop(0))
        if not running:
            break
        now = time.monotonic()
        next_deadline = min(t0 + wall_limit for (_, _, t0, _) in running.values())
        done = _wait_any({pid: v[1] for pid, v in running.items()}, max(0.0, min(next_deadline - now, 1.0)))
        for pid in done:
            if finish(pid, False) == "timeout":
                timeouts += 1
        now = time.monotonic()
        for pid, (_, _, t0, _) in list(running.items()):
            if now - t0 > wall_limit:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                finish(pid, True)
                timeouts += 1
        if now - last_beat > 1.0:
            out.send({"type": "beat"})
            last_beat = now
    for i in pending:
        out.send({"type": "test", "i": i, "status": "skipped"})


def _run_code_tests(job: dict, out: _Out, script_fds: list) -> None:
    import gc
    import time

    signal = _signal

    lim = job["limits"]
    tl = float(job["time_limit"])
    wall = tl * float(lim["wall_factor"]) + float(lim["wall_slack"])
    timeouts = 0
    for i, sfd in enumerate(script_fds):
        if timeouts >= int(lim["max_timeouts"]):
            os.close(sfd)
            out.send({"type": "test", "i": i, "status": "skipped"})
            continue
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        t0 = time.monotonic()
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (req_r, req_w, resp_r, resp_w, sfd):
                os.close(fd)
            out.send({"type": "test", "i": i, "status": "error",
                      "error": f"the test could not be started: {exc.strerror or exc}"})
            continue
        if pid == 0:
            try:
                _child_code_server(job, req_r, resp_w)
            finally:
                os._exit(70)
        os.close(req_r)
        os.close(resp_w)
        # only now, with the solution's process already forked, read the test script (its expected values)
        chunks = []
        while True:
            chunk = os.read(sfd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(sfd)
        script = b"".join(chunks).decode("utf-8", "replace")
        del chunks
        conn = _Conn(_LineIO(resp_r, req_w, 1 << 30))
        old_pipe = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        try:
            res = _run_test_script(job, script, conn, wall)
        finally:
            signal.signal(signal.SIGPIPE, old_pipe)
            for fd in (req_w, resp_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
        # give a dying child a moment to be reaped with its true status, then make sure it is gone
        status = usage = None
        for _ in range(20 if res["status"] == "died" else 1):
            got_pid, status, usage = os.wait4(pid, os.WNOHANG)
            if got_pid:
                break
            time.sleep(0.01)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status, usage = os.wait4(pid, 0)
        cpu = usage.ru_utime + usage.ru_stime
        if res["status"] == "died":
            kind, text = _classify_exit(status, cpu, tl)
            if kind == "timeout":
                res = {"status": "timeout"}
            elif kind == "crash":
                res = {"status": "error", "error": text, "input": conn.current_input()}
            else:
                res = {"status": "error", "error": "the program exited while the tests were running",
                       "input": conn.current_input()}
        elif res["status"] in ("ok", "wrong") and cpu > tl:
            res = {"status": "timeout"}
        if res["status"] == "timeout":
            timeouts += 1
            res["input"] = conn.current_input()
        res.update(type="test", i=i, cpu=round(cpu, 4), wall=round(time.monotonic() - t0, 4))
        out.send(res)
        del script, conn
        gc.collect()


def _harness_main(argv: list) -> None:
    jobdir, out = argv[1], _Out(int(argv[2]))
    try:
        with open(os.path.join(jobdir, "job.json"), "rb") as f:
            job = _jloads(f.read())
        if job.get("format") != _FORMAT_VERSION:
            raise ValueError("job format mismatch between the parent and the harness")
        script_fds = []
        for path in job.get("scripts", []):
            script_fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            os.unlink(path)
        if job.get("site_paths"):
            sys.path.extend(p for p in job["site_paths"] if p not in sys.path)
        import time

        t_setup = time.perf_counter()
        layers = _setup_sandbox(job["sandbox"])
        layers["setup_ms"] = round((time.perf_counter() - t_setup) * 1000, 2)
        out.send({"type": "hello", "layers": layers})
        if job["mode"] == "code":
            _run_code_tests(job, out, script_fds)
        else:
            _run_forked_tests(job, out)
        if layers.get("can_kill_all"):
            try:  # everything of this uid / Landlock domain except ourselves (strays of the solution)
                os.kill(-1, _signal.SIGKILL)
            except OSError:
                pass
        out.send({"type": "done"})
    except BaseException as exc:  # noqa: BLE001
        import traceback

        try:
            out.send({"type": "fatal", "error": "".join(traceback.format_exception(exc))[-4000:]})
        except BaseException:
            pass
        os._exit(1)
    os._exit(0)


# =====================================================================================================
# Parent side
# =====================================================================================================

if __name__ != "__main__":
    import dataclasses
    import functools
    import itertools
    import json
    import random
    import re
    import shutil
    import signal as _signal
    import subprocess
    import tempfile
    import threading
    import time

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
    _HARNESS = os.path.abspath(__file__)
    _UID_BASE, _UID_SPAN = 1_900_000_000, 100_000_000
    _counter = itertools.count()

    def _sandbox_uid() -> int:
        with _ID_LOCK:
            return _UID_BASE + (_ID_RNG.randrange(_UID_SPAN) + next(_counter)) % _UID_SPAN

    @functools.lru_cache(maxsize=None)
    def _read_paths() -> list:
        import sysconfig

        paths = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix}
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            try:
                paths.add(sysconfig.get_paths()[key])
            except KeyError:
                pass
        return sorted(p for p in paths if p)

    @functools.lru_cache(maxsize=None)
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

    def run_tests(code: str, mode: str, tests: list, *, fn_name: str | None = None, context: str = "",
                  time_limit: float = 6.0, limits: SandboxLimits | None = None) -> SandboxResult:
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
            env = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "HOME": workdir,
                   "TMPDIR": workdir, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                   "MKL_NUM_THREADS": "1"}
            try:
                proc = subprocess.Popen(
                    [lim.python or sys.executable, "-I", "-S", _HARNESS, jobdir, str(w)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(w,),
                    cwd=jobdir, env=env, start_new_session=True, close_fds=True,
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
                    error = ("sandbox did not start in time" if not layers else
                             "sandbox harness stopped responding")
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


if __name__ == "__main__":
    _harness_main(sys.argv)
