"""Run untrusted Python in a separate, locked-down process tree (never ``exec`` in the trainer).

Two halves live in this package:

* the **parent side** (``client.py``: ``run_tests``), imported by the trainer / reward workers; and
* the **harness** (``harness/``), a standalone standard-library program run as
  ``python -I -S harness/run_harness.py JOBDIR RESULT_FD``: ``sbx_lockdown`` (the kernel layers below),
  ``sbx_guard`` (the child's Python layer and the solution's side of every test), ``sbx_codec`` (plain
  values between C and U), ``sbx_asserts`` (assert scripts in U), ``sbx_loops`` (the test loops) and
  ``sbx_protocol`` (the job format and JSON lines, shared with the parent).

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

from mopd.rewards.sandbox.client import DEFAULT_LIMITS, SandboxLimits, SandboxResult, run_tests, sandbox_layers

__all__ = ["DEFAULT_LIMITS", "SandboxLimits", "SandboxResult", "run_tests", "sandbox_layers"]
