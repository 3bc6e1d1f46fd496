"""Kernel-level lock-down of the harness U, applied before any solution code exists in the process
(namespaces, tmpfs, uid drop, rlimits, no-new-privs, Landlock), and the per-child kernel settings.

``_SYS`` holds the ctypes handles; the child guard (``sbx_guard._lockdown``) clears it before solution code
runs. Standard library only (the harness runs with ``python -I -S``).
"""

import _signal
import os

_SYS = None  # ctypes handles (libc); dropped in every child before solution code runs
_LANDLOCK_ABI = 0  # what _setup_sandbox applied

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE, _MS_RDONLY = (
    2,
    4,
    32,
    4096,
    8192,
    16384,
    1 << 18,
    1,
)
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP = 1, 38, 24

# landlock (same syscall numbers on every architecture)
_LL_CREATE, _LL_ADD_RULE, _LL_RESTRICT = 444, 445, 446
_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1, 2, 4, 8
_LL_TRUNCATE, _LL_IOCTL_DEV = 1 << 14, 1 << 15

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
    rfd = _check(
        ctypes,
        syscall(_LL_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)),
        "landlock_create_ruleset",
    )
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
                _check(
                    ctypes,
                    syscall(_LL_ADD_RULE, ctypes.c_int(rfd), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0)),
                    f"landlock_add_rule {path}",
                )
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
    rfd = _check(
        ctypes,
        libc.syscall(_LL_CREATE, ctypes.byref(attr), ctypes.c_size_t(24), ctypes.c_uint32(0)),
        "landlock_create_ruleset",
    )
    try:
        _check(ctypes, libc.syscall(_LL_RESTRICT, ctypes.c_int(rfd), ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(rfd)


def _drop_capabilities(ctypes, libc):
    """Empty the capability sets and the bounding set (used when we cannot switch to another uid)."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

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
            for name, text in (
                ("setgroups", "deny"),
                ("uid_map", f"{real_uid} {real_uid} 1"),
                ("gid_map", f"{real_gid} {real_gid} 1"),
            ):
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
            ro_dirs = list(cfg["read_paths"]) + [
                "/usr",
                "/lib",
                "/lib64",
                "/lib32",
                "/libx32",
                "/sys/devices/system/cpu",
            ]
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
