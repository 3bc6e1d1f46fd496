"""Tagged encoding of plain values between C (solution) and U (assert script), for `code` tests: so a
verdict in U never depends on an object the solution made. Standard library only.
"""

import os

from sbx_protocol import _jdumps, _jloads

# ---------------------------------------------------------------------------------------------------
# Tagged encoding of plain values between C (solution) and U (assert script), for `code` tests.
# Primitives are JSON scalars; everything else is a list whose first element is a tag.


class _Handle:
    """Base of U's proxies (``sbx_asserts._Remote``): encoded back as the handle they stand for."""

    __slots__ = ()


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
    if isinstance(x, _Handle):
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
            view = view[os.write(self.wfd, view) :]

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
