"""The harness U's test loops: one forked child per stdin/functional test, or one function server per
`code` test, with CPU/wall limits and the verdict records sent to the parent. Standard library only.
"""

import _signal
import os

from sbx_asserts import _Conn, _run_test_script
from sbx_codec import _LineIO
from sbx_guard import _child_code_server, _child_process_test
from sbx_protocol import _jloads, _Out

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
                out.send(
                    {
                        "type": "test",
                        "i": i,
                        "status": "error",
                        "error": f"the test input could not be written: {exc.strerror or exc}",
                    }
                )
                return
        try:
            pid = os.fork()
        except OSError as exc:  # e.g. the process limit, used up by a fork bomb of an earlier test
            out.send(
                {
                    "type": "test",
                    "i": i,
                    "status": "error",
                    "error": f"the test could not be started: {exc.strerror or exc}",
                }
            )
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
            out.send(
                {
                    "type": "test",
                    "i": i,
                    "status": "error",
                    "error": f"the test could not be started: {exc.strerror or exc}",
                }
            )
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
                res = {
                    "status": "error",
                    "error": "the program exited while the tests were running",
                    "input": conn.current_input(),
                }
        elif res["status"] in ("ok", "wrong") and cpu > tl:
            res = {"status": "timeout"}
        if res["status"] == "timeout":
            timeouts += 1
            res["input"] = conn.current_input()
        res.update(type="test", i=i, cpu=round(cpu, 4), wall=round(time.monotonic() - t0, 4))
        out.send(res)
        del script, conn
        gc.collect()
