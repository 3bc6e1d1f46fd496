"""The harness's wire format: file names, the job format version, and JSON lines to the parent.

JSON goes through the C accelerator ``_json`` only: ``import json`` would pull in ``re`` and ``enum``
(~20 ms per sandbox). Standard library only; shared by the parent (``client.py``) and the harness.
"""

import _json
import os

SOLUTION_FILE = "solution.py"
CONTEXT_FILE = "context.py"
TEST_FILE = "test.py"
_FORMAT_VERSION = 1


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
            view = view[os.write(self.fd, view) :]
