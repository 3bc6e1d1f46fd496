"""The sandbox harness U: ``python -I -S run_harness.py JOBDIR RESULT_FD`` (started by ``client.run_tests``).

U is trusted code in a locked-down process: it reads the job, locks itself down (``sbx_lockdown``), then
runs the tests (``sbx_loops``), forking one child C per test that runs the solution under the Python
guard (``sbx_guard``); `code` tests' assert scripts run in U (``sbx_asserts``) against values encoded by
``sbx_codec``; records go to the parent as JSON lines (``sbx_protocol``). Standard library only.

``-I`` leaves this folder off ``sys.path``: it is appended (so the standard library and site packages keep
their names) only while the harness modules are imported, all before the lock-down (the sandbox user may
not be able to read this folder), and removed again so it never shadows a module a solution imports.
A solution reaches no more of the harness than when it was one file: the modules sit in ``sys.modules``
as the single script's functions sat in its ``__main__``, and the ctypes handles are cleared first.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(_HERE)
import _signal  # noqa: E402

from sbx_lockdown import _setup_sandbox  # noqa: E402
from sbx_loops import _run_code_tests, _run_forked_tests  # noqa: E402
from sbx_protocol import _FORMAT_VERSION, _jloads, _Out  # noqa: E402

sys.path.remove(_HERE)


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


if __name__ == "__main__":
    _harness_main(sys.argv)
