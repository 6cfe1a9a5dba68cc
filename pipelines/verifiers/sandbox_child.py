"""The sandboxed side of ``pipelines.verifiers.sandbox``: a standalone script (no imports from the factory).

Run as ``python -I -B sandbox_child.py CONFIG_JSON``, possibly as PID 1 of fresh network/PID/mount namespaces.
In order: private tmpfs over /tmp, /var/tmp and /dev/shm (namespaces only), resource limits, drop to the
unprivileged ``nobody`` user when started as root, an audit-hook guard (unless turned off), then the program.
Exit status 0 means the program ran to its end; anything else is a failure.
"""

import json
import os
import resource
import sys

EXIT_BLOCKED_EXIT = 3  # the program called sys.exit / exit before its tests finished
EXIT_SETUP = 4  # the sandbox could not be set up (reported, never counted as a pass)


MS_BIND = 4096
PRIVATE_WORKDIR = "/tmp/sandbox"
HIDDEN = ("/root", "/home")  # covered by empty tmpfs: secrets in home folders stay out of reach


def _kept_under_hidden() -> list[str]:
    """The folders under a hidden home that the interpreter needs (e.g. /root/.pyenv for a pyenv Python)."""
    kept = []
    for prefix in {sys.base_prefix, sys.prefix}:
        for home in HIDDEN:
            if prefix.startswith(home + os.sep):
                top = os.path.join(home, prefix[len(home) + 1:].split(os.sep)[0])
                if top not in kept:
                    kept.append(top)
    return kept


def _mount_private(workdir: str, size_mb: int) -> str:
    """Private tmpfs over /tmp, /var/tmp, /dev/shm and the home folders (the interpreter's own folder bound back),
    with ``workdir`` bound to /tmp/sandbox; returns that path. Only inside a fresh mount namespace."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def mount(source: bytes, target: str, kind: bytes | None, flags: int, options: bytes | None) -> None:
        if libc.mount(source, target.encode(), kind, flags, options) != 0:
            raise OSError(ctypes.get_errno(), f"mount on {target}: {os.strerror(ctypes.get_errno())}")

    binds = {PRIVATE_WORKDIR: workdir, **{path: path for path in _kept_under_hidden()}}
    held = {target: os.open(source, os.O_RDONLY | os.O_DIRECTORY) for target, source in binds.items()}
    for target in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(target):
            mount(b"tmpfs", target, b"tmpfs", 0, f"size={size_mb}m,mode=1777".encode())
    for target in HIDDEN:
        if os.path.isdir(target):
            mount(b"tmpfs", target, b"tmpfs", 0, b"size=1m,mode=755")
    for target, fd in held.items():
        os.makedirs(target, exist_ok=True)
        mount(f"/proc/self/fd/{fd}".encode(), target, None, MS_BIND, None)
        os.close(fd)
    return PRIVATE_WORKDIR


def _readable_by_anyone(path: str) -> bool:
    """Whether every folder down to ``path`` can be entered by any user (else ``nobody`` cannot import from it)."""
    import stat

    current = os.path.abspath(path)
    while True:
        try:
            if not os.stat(current).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent


def _run_as_pid1_child() -> None:
    """As PID 1 of a PID namespace, fork: the program runs as an ordinary process (signals act normally) and
    PID 1 waits and passes its status on; when PID 1 exits the kernel kills whatever is left."""
    pid = os.fork()
    if pid == 0:
        return
    status = os.waitpid(pid, 0)[1]
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def _limit(config: dict) -> None:
    cpu = int(config["cpu_s"])
    memory = int(config["memory_mb"]) * 1024 * 1024
    files = int(config["file_mb"]) * 1024 * 1024
    for which, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (memory, memory)),
                         (resource.RLIMIT_FSIZE, (files, files)), (resource.RLIMIT_CORE, (0, 0)),
                         (resource.RLIMIT_NOFILE, (256, 256)),
                         (resource.RLIMIT_NPROC, (int(config["processes"]), int(config["processes"])))):
        resource.setrlimit(which, value)


def _drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def _install_guard(workdir: str) -> None:
    """Python-level second line: no sockets, subprocesses, signals to others, ctypes or writes outside workdir.

    The OS limits above are the real boundary; this makes hostile programs fail early and clearly.
    """
    blocked = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
               "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
               "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.putenv", "os.unsetenv",
               "sys.remote_exec"}
    root = os.path.realpath(workdir)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    own_pid = os.getpid()

    def inside(path: object) -> bool:
        if isinstance(path, int):  # an already open descriptor
            return True
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return real == root or real.startswith(root + os.sep) or real == os.devnull

    def hook(event: str, args: tuple) -> None:
        if event in blocked:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args and str(args[0]).split(".")[0] in {"ctypes", "_ctypes", "_posixsubprocess"}:
            raise PermissionError(f"sandbox: import {args[0]} is not allowed")
        if event in {"os.kill", "os.killpg"} and args and args[0] not in (own_pid, 0):
            raise PermissionError(f"sandbox: {event} of another process is not allowed")
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2] or 0
            writes = bool(flags & write_flags) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writes and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the sandbox folder is not allowed")
        if event in {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
                     "os.symlink", "os.truncate", "os.utime", "shutil.rmtree"} and args and not inside(args[0]):
            raise PermissionError(f"sandbox: {event} outside the sandbox folder is not allowed")

    sys.addaudithook(hook)
    os._exit = None  # type: ignore[assignment]  # a program must not end itself "successfully" mid-way
    import posix

    posix._exit = None  # type: ignore[attr-defined]


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        config = json.load(handle)
    workdir = config["workdir"]
    try:
        if config["namespaces"]:
            workdir = _mount_private(workdir, int(config["file_mb"]))
            os.environ["HOME"] = workdir
            _run_as_pid1_child()
        os.chdir(workdir)
        _limit(config)
        # without namespaces a Python under a private home (pyenv in /root) is unreadable to nobody: stay root then
        if os.getuid() == 0 and (config["namespaces"] or _readable_by_anyone(sys.base_prefix)):
            _drop_privileges(int(config["uid"]), int(config["gid"]))
        with open(os.path.join(workdir, "solution.py"), encoding="utf-8") as handle:
            source = handle.read()
    except Exception as exc:  # noqa: BLE001 - any set-up failure is reported and fails the check
        print(f"sandbox set-up failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_SETUP)
    sys.argv = ["solution.py"]
    sys.path.insert(0, workdir)
    code = compile(source, "solution.py", "exec")
    if config["guard"]:
        _install_guard(workdir)
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit:
        print("sandbox: the program exited before its tests finished", file=sys.stderr, flush=True)
        sys.exit(EXIT_BLOCKED_EXIT)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
