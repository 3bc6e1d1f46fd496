"""The U side of `code` tests: the assert script runs here, in the trusted harness, against proxies that
call into the child C and get back plain data only. Standard library only.
"""

import _signal

from sbx_codec import _dec_plain, _enc_plain, _Handle, _LineIO
from sbx_protocol import CONTEXT_FILE, TEST_FILE

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
            n: c
            for n, c in vars(builtins).items()
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


class _Remote(_Handle):
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
        value, mut = conn.request(
            {"op": "call", "h": object.__getattribute__(self, "_hid"), "args": enc_args, "kwargs": enc_kwargs}, describe
        )
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
_REF_MODULES = frozenset(
    {
        "typing",
        "collections",
        "collections.abc",
        "_collections",
        "_collections_abc",
        "itertools",
        "functools",
        "_functools",
        "math",
        "cmath",
        "operator",
        "_operator",
        "heapq",
        "_heapq",
        "bisect",
        "_bisect",
        "re",
        "string",
        "fractions",
        "decimal",
        "_decimal",
        "_pydecimal",
        "statistics",
        "random",
        "dataclasses",
        "enum",
        "copy",
        "numbers",
        "array",
        "datetime",
        "_datetime",
        "json",
        "abc",
        "_abc",
        "textwrap",
        "unicodedata",
        "hashlib",
        "_hashlib",
        "_sha256",
        "_md5",
        "struct",
        "_struct",
        "calendar",
        "graphlib",
        "numpy",
        "sortedcontainers",
    }
)


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
        return {
            "status": "error",
            "error": f"{type(exc).__name__}: {message}" if message else type(exc).__name__,
            "input": conn.last_call[0] if conn.last_call else "",
        }
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
