"""The child C, right before and while solution code runs: the Python-level second layer (audit hook,
deleted ``os`` functions, blocked imports), the child's file descriptors, running the solution, and the
C side of stdin/functional tests and of `code` tests (the function server). Standard library only.
"""

import os
import sys

import sbx_lockdown
from sbx_codec import _dec_plain, _enc_plain, _LineIO
from sbx_lockdown import _child_common
from sbx_protocol import CONTEXT_FILE, SOLUTION_FILE, _jdumps

_BLOCKED_IMPORTS = frozenset(
    {
        "ctypes",
        "_ctypes",
        "cffi",
        "_cffi_backend",
        "_posixsubprocess",
        "subprocess",
        "_xxsubinterpreters",
        "_xxinterpchannels",
        "_testcapi",
        "_testinternalcapi",
        "multiprocessing",
        "_multiprocessing",
        "pty",
    }
)
_DENIED_EVENTS = frozenset(
    {
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "subprocess.Popen",
        "pty.spawn",
        "os.killpg",
        "builtins.breakpoint",
        "cpython.PyInterpreterState_New",
        "os.startfile",
        "webbrowser.open",
    }
)
_PATH_EVENTS = {  # event -> indexes of the path arguments that must stay inside the working directory
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.chflags": (0,),
    "os.lchflags": (0,),
    "os.lchmod": (0,),
    "os.lchown": (0,),
    "os.link": (0, 1),
    "os.rename": (0, 1),
    "os.symlink": (1,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.mkfifo": (0,),
    "os.mknod": (0,),
    "shutil.rmtree": (0,),
    "shutil.copyfile": (1,),
    "shutil.copymode": (1,),
    "shutil.copystat": (1,),
    "shutil.copytree": (1,),
    "shutil.move": (0, 1),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
}
_DELETED_OS_FUNCS = (
    "fork",
    "forkpty",
    "system",
    "popen",
    "execv",
    "execve",
    "execl",
    "execle",
    "execlp",
    "execlpe",
    "execvp",
    "execvpe",
    "fexecve",
    "spawnv",
    "spawnve",
    "spawnvp",
    "spawnvpe",
    "spawnl",
    "spawnle",
    "spawnlp",
    "spawnlpe",
    "posix_spawn",
    "posix_spawnp",
    "kill",
    "killpg",
    "setsid",
    "setpgid",
    "setpgrp",
    "register_at_fork",
    "pidfd_open",
    "chroot",
)


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
    sbx_lockdown._SYS = None  # the ctypes handles: gone before any solution code runs
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


def _std_streams() -> None:
    import io

    sys.stdin = sys.__stdin__ = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8", errors="replace"
    )
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8", errors="backslashreplace"
    )
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )


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
            return f'  File "{exc.filename}", line {exc.lineno}\n    {line.strip()}\n{name}: {exc.msg}'
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
    (res_fd,) = _child_fds(
        paths["in"] if mode == "stdin" else None,
        paths["out"] if mode == "stdin" else None,
        keep=(os.open(paths["res"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600),),
    )
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
            view = view[write(res_fd, view) :]
    except BaseException:
        pass
    os._exit(0)


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
        return {
            "err": {
                "type": type(exc).__name__ if isinstance(type(exc).__name__, str) else "Exception",
                "text": _format_exception(exc, sources),
            }
        }

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
            if (
                isinstance(owner, str)
                and isinstance(qual, str)
                and owner not in ("solution", "__main__")
                and (callable(value) or isinstance(value, type))
            ):
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
