"""Sandboxed, incremental Python executor for model-written code steps.

A solution is a sequence of code steps whose state (variables, imports, files) carries over like a notebook,
and a tree search sends many sibling steps that share one prefix.  Instead of re-running the prefix for each
step, the process that ran a step stays alive as the *holder* of that state; the next step runs in a child
forked from it, which then holds the new state.  Cost per step is one fork (a few ms), whatever the depth,
and siblings fork from the same holder, so a prefix runs once.  ::

    with Executor(ExecutorConfig(timeout_s=5)) as ex:
        r1 = ex.run("x = 2\\nprint(x)")                 # fresh state -> "2\\n"
        r2 = ex.run("print(x * 3)", parent=r1.state)   # continues r1's state -> "6\\n"
        rs = ex.run_many([(r1.state, "y = x + 1\\nprint(y)"), (r1.state, "print(x ** 10)")])  # concurrently

Processes (worker code in ``_sandbox.py``): a *launcher* per executor (the only child of the caller) forks a
*zygote* that imports math, sympy, numpy, fractions, itertools once and holds the empty state; every step is
a fork of the zygote or of a holder.  At most ``max_workers`` steps run at once.  Live holders are capped
(count and memory, LRU); an evicted state is rebuilt transparently by replaying its steps' code (a
:class:`State` handle remembers its code through its parent), from the nearest live ancestor.

Step semantics: a step that raises still leaves a state (like a notebook cell: what ran before the exception
stays); ``result.state`` is None only when the step's process died (timeout, crash, ``os._exit``), and such
a state cannot be continued.  stdout is captured (stderr is dropped); output of a killed step is lost.
Replay re-runs code, so a rebuilt state differs from the original where the code is non-deterministic
(random numbers, time).

Security model, honestly.  Enforced by the kernel, always (unless ``isolate=False``):

* seccomp filter on every sandbox process: no execve (no other program can run), no socket(2), no threads
  (clone with CLONE_THREAD), no ptrace/process_vm_*, unshare, setns, mount, bpf, userfaultfd,
  perf_event_open, keyctl, io_uring, setsid; plus no_new_privs;
* rlimits: RLIMIT_AS (memory), RLIMIT_FSIZE (file size), RLIMIT_CORE=0, RLIMIT_CPU per step (soft:
  SIGXCPU; hard, SIGKILL: the step's limit + 60 s, which also bounds a state holder's lifetime CPU);
* wall-clock timeout: SIGKILL to the step's process and process group (uncatchable, so signal tampering is
  useless); when the caller goes away (its stdin closes) the launcher kills the zygote and everything in
  its session, which sandbox processes cannot leave (setsid is denied); ``close()`` does the same.

When the caller runs as root, also:

* new network namespace (no interface up: no network at all) and new pid namespace (sandbox code sees and
  signals only sandbox processes; when the zygote dies the kernel kills everything in it);
* a per-executor unprivileged uid (can't write root's files or signal other users' processes) with
  RLIMIT_NPROC (a fork bomb stops at ``max_processes``).  /root and the like stay closed: only the
  interpreter's own sys.path dirs are opened, through fds (``_sandbox.reach_python_files``).

Enforced only in Python (an audit hook in every sandbox process; stubs for ``ctypes`` and
``_posixsubprocess``, which act without audit events): user code may not fork, exec, spawn (``os.system``,
``subprocess``, ``multiprocessing``), send signals, open sockets, use ctypes, add audit/trace/profile hooks,
change rlimits, or write/remove/rename files outside its working dir.  The harness itself must fork, so an
event is allowed to it only when every frame on the stack is harness code (callbacks that user code plants
-- ``__del__``, at-fork hooks, patched functions -- are frames of their own and stay restricted), and only
the few events it needs: fork, wrapping its sockets, the CPU rlimit, writes under the executor's temp dir.
User code can reach harness frames (sympy and numpy need frame access), so it can subvert the harness, but
that yields at most more forks, bounded by RLIMIT_NPROC and the pid namespace.  Each state has its own
working dir (a copy of its parent's) under one temp dir per executor, removed on eviction and on close.

Not covered: this is not a proof.  Python-level checks have holes (``os.open`` with ``dir_fd`` is not
path-checked; ctypes' C types stay reachable through ``object.__subclasses__()``, enough to corrupt memory;
bugs in the interpreter or C extensions); behind them only the kernel layers remain.  Without root (or
without namespaces) there is no network/pid namespace, no uid drop and no RLIMIT_NPROC (a warning is
logged; ``Executor.isolation`` lists what is active).  seccomp needs x86_64 or aarch64.  World-writable
dirs (/tmp, /dev/shm) are writable by the sandbox uid at the kernel level.  Reading files is limited only by
normal permissions.  A step can lie about its own output (by writing to its channel).  Sandbox processes
share the machine's CPU and memory with the caller.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from mathforge._sandbox import kill_session

log = logging.getLogger(__name__)

_SANDBOX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox.py")
_HEADER = struct.Struct("!I")
_READ_CHUNKS = 16  # at most this many 64 KiB reads per socket per wake-up: a flood can't starve the loop
_STATUS_WAIT_S = 0.5  # after a step's process dies, how long to wait for its parent to report how
_MAX_ATTEMPTS = 3

# error_type values for steps that did not end with a Python exception
TIMEOUT = "Timeout"  # wall-clock or CPU time limit
KILLED = "Killed"  # the process died from a signal (segfault, ...)
EXITED = "Exit"  # the process exited (os._exit) before the step finished
STATE_LOST = "StateLost"  # the parent state could not be rebuilt
SKIPPED = "Skipped"  # run_program: an earlier step's process died, so later steps had no state
SANDBOX_ERROR = "SandboxError"  # the executor itself failed to run the step


@dataclass
class ExecutorConfig:
    """Limits and sizes of an :class:`Executor`.  Limits apply to every step."""

    timeout_s: float = 5.0
    """Wall-clock limit per step; the step's process group is SIGKILLed when it runs out."""
    cpu_time_s: float | None = None
    """CPU-time limit per step (RLIMIT_CPU, soft: SIGXCPU); None: ``timeout_s`` + 1, a backstop."""
    memory_bytes: int = 2 << 30
    """Address-space limit of every sandbox process (RLIMIT_AS); numpy and sympy need ~0.2 GiB of it."""
    max_output_chars: int = 64 << 10
    """stdout beyond this is cut and a ``[output truncated: N more characters]`` marker appended."""
    max_file_bytes: int = 16 << 20
    """Largest file a step may write (RLIMIT_FSIZE; writing more raises OSError in user code)."""
    max_workers: int | None = None
    """Steps running at the same time; None: ``os.cpu_count()``."""
    max_states: int = 64
    """Live state-holding processes kept (LRU); an evicted state is rebuilt by replay when needed again."""
    max_state_memory: int | None = None
    """Memory of live holders (pages each touched since its fork) before LRU eviction; None: RAM / 4."""
    max_processes: int | None = None
    """RLIMIT_NPROC for the sandbox uid (root only); None: ``2 * (max_states + 2 * max_workers) + 64``
    (evicted holders take a moment to exit; a fork that meets the limit waits up to 5 s for them)."""
    preload: tuple[str, ...] = (
        "math", "cmath", "fractions", "decimal", "itertools", "functools", "collections", "random", "re",
        "statistics", "numpy", "sympy",
    )  # fmt: skip
    """Modules the zygote imports (and sympy/numpy warms up) so that steps don't pay for them."""
    isolate: bool = True
    """Kernel-level isolation: seccomp, plus (as root) network/pid namespaces and a dropped uid.
    False: rlimits, timeouts and the Python-level guard only."""
    sandbox_uid: int | None = None
    """The uid (and gid) sandbox processes run as when root; None: a random unused-looking high uid."""
    startup_timeout_s: float = 60.0
    """How long the zygote may take to start (importing sympy, numpy)."""


class State:
    """Handle to the interpreter state after a sequence of steps (variables, imports, working-dir files).

    Lightweight: it holds its step's code and its parent handle, so an evicted state can be rebuilt by
    replaying :meth:`codes`.  Valid only with the executor that made it.
    """

    __slots__ = ("parent", "code", "depth", "_node", "_owner")

    def __init__(self, parent: State | None, code: str, node: int, owner: object):
        self.parent = parent
        self.code = code
        self.depth = 1 if parent is None else parent.depth + 1
        self._node = node
        self._owner = owner

    def codes(self) -> list[str]:
        """The code of every step from the empty state to this one."""
        out, state = [], self
        while state is not None:
            out.append(state.code)
            state = state.parent
        return out[::-1]

    def __repr__(self) -> str:
        return f"State(depth={self.depth}, node={self._node})"


@dataclass
class ExecResult:
    """What one step did.  ``error_type``/``error_message`` are None when it ran to the end."""

    stdout: str = ""
    error_type: str | None = None
    """Exception class name (``ZeroDivisionError``, ``SandboxViolation``, ...) or TIMEOUT/KILLED/EXITED/..."""
    error_message: str | None = None
    """Short message: ``str(exception)``, the last line of a traceback."""
    timed_out: bool = False
    """The wall-clock or CPU time limit was hit."""
    killed: bool = False
    """The step's process died before reporting (limit, signal, os._exit): its state is gone."""
    duration_s: float = 0.0
    """Wall time from dispatch to result, as seen by the caller."""
    state: State | None = None
    """The state after this step (also after an exception), to pass as ``parent``; None if killed."""
    output_truncated: bool = False
    """stdout was cut at ``max_output_chars`` (and ends with a marker saying how much was dropped)."""

    @property
    def ok(self) -> bool:
        return self.error_type is None

    @property
    def error(self) -> str | None:
        """``"Type: message"`` (or just the type), None when the step ran fine."""
        if self.error_type is None:
            return None
        return f"{self.error_type}: {self.error_message}" if self.error_message else self.error_type


def _failure(error_type: str, message: str, **flags) -> ExecResult:
    return ExecResult(error_type=error_type, error_message=message, **flags)


class _Conn:
    """The executor's end of a control socket: length-prefixed JSON frames, read without blocking."""

    def __init__(self, sock: socket.socket, max_frame: int):
        self.sock = sock
        self.max_frame = max_frame  # larger frames can only be garbage written by user code
        self.buf = bytearray()
        self.pid: int | None = None  # the peer's pid as we see it (SCM_CREDENTIALS), for killing it
        self.closed = False  # EOF, error or garbage: nothing more will be read
        self.garbage = False  # closed because of invalid data: the peer may well still be running

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: dict, fd: int | None = None) -> bool:
        data = json.dumps(msg).encode()
        frame = _HEADER.pack(len(data)) + data
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))] if fd is not None else []
        try:
            sent = self.sock.sendmsg([frame], ancillary, socket.MSG_NOSIGNAL)
            if sent < len(frame):
                self.sock.sendall(frame[sent:], socket.MSG_NOSIGNAL)
            return True
        except OSError:
            self.closed = True
            return False

    def read(self) -> list[dict]:
        """Messages that have arrived; sets ``closed`` at EOF."""
        for _ in range(_READ_CHUNKS):
            if self.closed:
                break
            try:
                data, ancillary, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(12), socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data, ancillary = b"", []
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and self.pid is None:
                    self.pid = struct.unpack("3i", payload[:12])[0]
            if not data:
                self.closed = True
            self.buf += data
        messages = []
        while len(self.buf) >= _HEADER.size:
            size = _HEADER.unpack_from(self.buf)[0]
            if size > self.max_frame:
                self.closed = self.garbage = True
                break
            if len(self.buf) < _HEADER.size + size:
                break
            raw = bytes(self.buf[_HEADER.size : _HEADER.size + size])
            del self.buf[: _HEADER.size + size]
            try:
                msg = json.loads(raw)
            except ValueError:
                msg = None
            if not isinstance(msg, dict):
                self.closed = self.garbage = True
                break
            messages.append(msg)
        return messages

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class _Holder:
    """A live process holding a state (or the zygote, holding the empty one)."""

    def __init__(self, conn: _Conn, workdir: str | None, memory: int):
        self.conn = conn
        self.workdir = workdir
        self.memory = memory


class _Task:
    """One requested step (or the rebuild of an evicted state) until its result is known."""

    def __init__(self, parent: State | None, steps: list[str], rebuild_of: State | None = None):
        self.parent = parent  # fork from this state (None: the empty state)
        self.steps = steps  # run these there; all but the last are a silent replay
        self.rebuild_of = rebuild_of  # for a rebuild: the handle whose holder this re-creates
        self.dependents: list[_Task] = []  # tasks waiting for this rebuild
        self.result: ExecResult | None = None
        self.attempts = 0


class _Job:
    """A task running in a forked process."""

    def __init__(self, job_id: int, task: _Task, conn: _Conn, holder: _Holder, workdir: str, timeout: float):
        self.id = job_id
        self.task = task
        self.conn = conn
        self.holder = holder
        self.workdir = workdir
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.hello = False  # the process is up (and conn.pid known)
        self.dead_since: float | None = None  # its socket closed without a result
        self.status: int | None = None  # wait status, reported by the process it was forked from


class Executor:
    """Runs code steps in sandboxed processes, keeping each step's state alive for the next.

    Thread-safe: calls are serialized (use :meth:`run_many` for concurrency).  Close it (or use ``with``);
    an atexit hook closes any left open.
    """

    def __init__(self, config: ExecutorConfig | None = None):
        self.config = config = config or ExecutorConfig()
        self.workers = config.max_workers or os.cpu_count() or 1
        self.max_state_memory = (
            config.max_state_memory or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
        )
        self.uid = config.sandbox_uid or random.randrange(1 << 20, 1 << 30)
        self._max_frame = 8 * config.max_output_chars + (1 << 20)  # JSON escapes take up to 6 bytes a char
        self.isolation: list[str] = []  # what the kernel enforces here, see the module docstring
        self._token = object()  # identifies this executor's State handles
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._holders: OrderedDict[int, _Holder] = OrderedDict()  # node -> holder, least recently used first
        self._zygote: _Holder | None = None
        self._launcher: subprocess.Popen | None = None
        self._closed = False
        self._base = tempfile.mkdtemp(prefix="mathforge-exec-")
        _LIVE.add(self)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # --- public API -------------------------------------------------------------------------------------

    def run(self, code: str, parent: State | None = None) -> ExecResult:
        """Run one step on top of ``parent`` (None: a fresh state)."""
        return self.run_many([(parent, code)])[0]

    def run_many(self, jobs: Iterable[tuple[State | None, str]]) -> list[ExecResult]:
        """Run many ``(parent, code)`` steps, up to ``max_workers`` at once; results in the same order."""
        tasks = []
        for parent, code in jobs:
            if not isinstance(code, str):
                raise TypeError(f"code must be a str, not {type(code).__name__}")
            if parent is not None and parent._owner is not self._token:
                raise ValueError("this State belongs to another Executor")
            tasks.append(_Task(parent, [code]))
        with self._lock:
            if self._closed:
                raise RuntimeError("Executor is closed")
            self._execute(tasks)
        return [task.result for task in tasks]

    def run_program(self, steps: list[str]) -> list[ExecResult]:
        """Run a whole solution, step after step; one result per step.

        After a step whose process died, later steps are not run (error_type ``Skipped``).  The states of
        intermediate steps are released (their handles stay valid, rebuilt by replay if used).
        """
        results: list[ExecResult] = []
        state = None
        for i, code in enumerate(steps):
            if i and state is None:
                results.append(_failure(SKIPPED, "an earlier step did not finish"))
                continue
            result = self.run(code, parent=state)
            if state is not None:
                self.release(state)
            results.append(result)
            state = result.state
        return results

    def release(self, state: State) -> None:
        """Stop holding ``state`` in a live process (the handle stays valid: it is rebuilt if used)."""
        if state._owner is not self._token:
            raise ValueError("this State belongs to another Executor")
        with self._lock:
            holder = self._holders.pop(state._node, None)
            if holder is not None:
                self._close_holder(holder)

    def close(self) -> None:
        """Kill every sandbox process and remove the working dirs.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop()
            shutil.rmtree(self._base, ignore_errors=True)  # (if _start never ran)
            _LIVE.discard(self)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- processes ----------------------------------------------------------------------------------------

    def _start(self) -> None:
        """Start the launcher and zygote; wait until the zygote has imported everything."""
        cfg = self.config
        root = os.geteuid() == 0 and cfg.isolate
        os.makedirs(self._base, mode=0o700, exist_ok=True)  # (a stopped launcher removes it)
        if root:
            os.chown(self._base, self.uid, self.uid)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        settings = {
            "ctl": theirs.fileno(),
            "base": self._base,
            "isolate": cfg.isolate,
            "uid": self.uid,
            "memory_bytes": cfg.memory_bytes,
            "max_file_bytes": cfg.max_file_bytes,
            "max_processes": cfg.max_processes or 2 * (cfg.max_states + 2 * self.workers) + 64,
            "cpu_time_s": cfg.cpu_time_s or cfg.timeout_s + 1,
            "max_output_chars": cfg.max_output_chars,
            "preload": list(cfg.preload),
        }
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": self._base,
            "TMPDIR": self._base,
            "LANG": "C.UTF-8",
            # one thread per process: BLAS thread pools would count against RLIMIT_NPROC and break fork
            **{v: "1" for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        }
        stderr = tempfile.TemporaryFile()
        try:
            self._launcher = subprocess.Popen(
                [sys.executable, "-I", "-B", _SANDBOX, json.dumps(settings)],
                stdin=subprocess.PIPE,  # our lifeline: when it closes, the launcher kills the zygote
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=[theirs.fileno()],
                cwd=self._base,
                env=env,
                start_new_session=True,
            )
        finally:
            theirs.close()
        conn = _Conn(mine, self._max_frame)
        deadline = time.monotonic() + cfg.startup_timeout_s
        ready = None
        while ready is None and not conn.closed and time.monotonic() < deadline:
            select.select([conn], [], [], max(0.0, deadline - time.monotonic()))
            ready = next((m for m in conn.read() if m.get("t") == "ready"), None)
        if ready is None:
            conn.close()
            self._stop()
            stderr.seek(0)
            tail = stderr.read()[-3000:].decode(errors="replace")
            raise RuntimeError(f"the executor's sandbox failed to start:\n{tail}")
        stderr.close()
        self._zygote = _Holder(conn, None, 0)
        self.isolation = ready["isolation"]
        if not root:
            log.warning(
                "executor: %s: no network/pid namespace, no uid drop, no RLIMIT_NPROC (active: %s)",
                "isolation disabled" if not cfg.isolate else "not running as root",
                ", ".join(self.isolation) or "rlimits, timeouts and the Python-level guard only",
            )
        elif len(self.isolation) < 4:
            log.warning("executor: only partial isolation available: %s", ", ".join(self.isolation))

    def _stop(self) -> None:
        """Kill the launcher's whole session (zygote, holders, jobs) and forget every holder."""
        for holder in self._holders.values():
            holder.conn.close()
        self._holders.clear()
        if self._zygote is not None:
            self._zygote.conn.close()
            self._zygote = None
        launcher, self._launcher = self._launcher, None
        if launcher is None:
            return
        launcher.stdin.close()  # the launcher kills the zygote, and with it the pid namespace
        try:
            launcher.wait(timeout=2)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
        kill_session(launcher.pid)  # belt and braces (the launcher did it, unless it was killed)
        shutil.rmtree(self._base, ignore_errors=True)

    def _restart(self) -> None:
        log.warning("executor: the zygote died; restarting it (live states will be rebuilt by replay)")
        self._stop()
        self._start()

    def _close_holder(self, holder: _Holder) -> None:
        holder.conn.close()  # the holder sees EOF and exits
        if holder.workdir:
            shutil.rmtree(holder.workdir, ignore_errors=True)

    # --- scheduling -------------------------------------------------------------------------------------

    def _execute(self, tasks: list[_Task]) -> None:
        queue = deque(tasks)
        running: dict[int, _Job] = {}
        rebuilds: dict[int, _Task] = {}  # node -> its rebuild, so siblings share one
        restarts = 0
        try:
            while queue or running:
                while queue and len(running) < self.workers:
                    task = queue.popleft()
                    if self._zygote is None:  # it died: start a new one (a few times per batch at most)
                        restarts += 1
                        if restarts > _MAX_ATTEMPTS:
                            self._finish(task, _failure(SANDBOX_ERROR, "the sandbox keeps dying"), queue)
                            continue
                        self._restart()
                    job = self._dispatch(task, queue, rebuilds)
                    if job is not None:
                        running[job.id] = job
                if running:
                    self._wait(running, queue)
        finally:  # jobs are left only after an exception (e.g. KeyboardInterrupt): kill them
            for job in running.values():
                _kill(job.conn.pid)
                job.conn.close()
                shutil.rmtree(job.workdir, ignore_errors=True)

    def _dispatch(self, task: _Task, queue: deque, rebuilds: dict[int, _Task]) -> _Job | None:
        """Send the task to the holder of its parent state; or queue a rebuild of that state first."""
        task.attempts += 1
        if task.attempts > _MAX_ATTEMPTS + 1:
            self._finish(task, _failure(SANDBOX_ERROR, "could not start the step"), queue)
            return None
        parent = task.parent
        holder = self._zygote if parent is None else self._holders.get(parent._node)
        if holder is None:
            rebuild = rebuilds.get(parent._node)
            if rebuild is None or rebuild.result is not None:
                rebuild = rebuilds[parent._node] = self._rebuild_task(parent)
                queue.appendleft(rebuild)
            rebuild.dependents.append(task)
            return None
        job_id = next(self._ids)
        workdir = os.path.join(self._base, f"s{job_id}")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sent = holder.conn.send(
            {"op": "run", "job": job_id, "steps": task.steps, "dir": workdir}, theirs.fileno()
        )
        theirs.close()
        if not sent:  # the holder is gone: forget it; the retry rebuilds (or restarts the zygote)
            mine.close()
            self._forget(holder)
            queue.appendleft(task)
            return None
        if parent is not None:
            self._holders.move_to_end(parent._node)
        return _Job(
            job_id,
            task,
            _Conn(mine, self._max_frame),
            holder,
            workdir,
            self.config.timeout_s * len(task.steps),
        )

    def _rebuild_task(self, state: State) -> _Task:
        """Replay the steps between the nearest live ancestor of ``state`` and ``state``."""
        steps, ancestor = [], state
        while ancestor is not None and ancestor._node not in self._holders:
            steps.append(ancestor.code)
            ancestor = ancestor.parent
        return _Task(ancestor, steps[::-1], rebuild_of=state)

    def _wait(self, running: dict[int, _Job], queue: deque) -> None:
        """Wait for messages or the next deadline, and act on them."""
        watched: dict[int, tuple[str, object]] = {}
        for job in running.values():
            if job.dead_since is None:
                watched[job.conn.fileno()] = ("job", job)
            if not job.holder.conn.closed:
                watched[job.holder.conn.fileno()] = ("holder", job.holder)
        next_deadline = min(
            j.deadline if j.dead_since is None else j.dead_since + _STATUS_WAIT_S for j in running.values()
        )
        poller = select.poll()
        for fd in watched:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(max(0.0, next_deadline - time.monotonic()) * 1000 + 1):
            kind, obj = watched[fd]
            if kind == "job" and obj.id in running:
                self._on_job(obj, running, queue)
            elif kind == "holder":
                self._on_holder(obj, running, queue)
        now = time.monotonic()
        for job in list(running.values()):
            if job.dead_since is not None and now >= job.dead_since + _STATUS_WAIT_S:
                self._end_job(job, running, queue, _death(job.status, self.config))
            elif job.dead_since is None and now >= job.deadline:
                _kill(job.conn.pid)
                if not job.hello and job.holder is not self._zygote:  # its holder does not serve: drop it
                    _kill(job.holder.conn.pid)
                    self._forget(job.holder)
                limit = f"exceeded the wall-clock limit of {job.timeout:g} s"
                self._end_job(job, running, queue, _failure(TIMEOUT, limit, timed_out=True, killed=True))

    def _on_job(self, job: _Job, running: dict[int, _Job], queue: deque) -> None:
        for msg in job.conn.read():
            if msg.get("t") == "hello":
                job.hello = True
            elif msg.get("t") == "result" and job.hello:
                error_type, error_message = msg.get("error_type"), msg.get("error_message")
                result = ExecResult(
                    stdout=str(msg.get("stdout", "")),
                    error_type=None if error_type is None else str(error_type),
                    error_message=None if error_message is None else str(error_message),
                    output_truncated=bool(msg.get("truncated")),
                )
                memory = msg.get("memory")
                self._end_job(job, running, queue, result, memory=memory if isinstance(memory, int) else 0)
                return
        if not job.conn.closed:
            return
        if job.conn.garbage:  # user code wrote to the channel: stop it
            _kill(job.conn.pid)
            self._end_job(
                job, running, queue, _failure(KILLED, "the step wrote garbage to its channel", killed=True)
            )
        elif not job.hello:  # never started (its holder died first): try again
            running.pop(job.id)
            job.conn.close()
            queue.appendleft(job.task)
        elif job.status is not None or job.holder.conn.closed:
            self._end_job(job, running, queue, _death(job.status, self.config))
        elif job.dead_since is None:
            job.dead_since = time.monotonic()  # wait a little for its holder to report how it died

    def _on_holder(self, holder: _Holder, running: dict[int, _Job], queue: deque) -> None:
        for msg in holder.conn.read():
            job = running.get(msg.get("job"))
            if job is None or job.holder is not holder:
                continue
            if msg.get("t") == "exit" and isinstance(msg.get("status"), int):
                job.status = msg["status"]
                self._on_job(job, running, queue)
            elif msg.get("t") == "error":
                running.pop(job.id)
                job.conn.close()
                self._finish(job.task, _failure(SANDBOX_ERROR, str(msg.get("message"))), queue)
        if holder.conn.closed:
            if holder.conn.garbage:
                _kill(holder.conn.pid)
            self._forget(holder)
            for job in list(running.values()):
                if job.holder is holder and job.dead_since is not None:
                    self._end_job(job, running, queue, _death(job.status, self.config))

    def _end_job(self, job: _Job, running: dict, queue: deque, result: ExecResult, memory: int | None = None):
        """Record the job's result; with ``memory`` (it reported) its process now holds the new state."""
        running.pop(job.id, None)
        result.duration_s = time.monotonic() - job.started
        if memory is None:
            job.conn.close()
            shutil.rmtree(job.workdir, ignore_errors=True)
        else:
            task = job.task
            state = task.rebuild_of or State(task.parent, task.steps[-1], next(self._ids), self._token)
            self._holders[state._node] = _Holder(job.conn, job.workdir, memory)
            self._evict(running, queue, keep=state._node)
            result.state = state
        self._finish(job.task, result, queue)

    def _finish(self, task: _Task, result: ExecResult, queue: deque) -> None:
        task.result = result
        if task.rebuild_of is None:
            return
        for dependent in reversed(task.dependents):  # resume the steps that waited for this state
            if result.state is not None:
                queue.appendleft(dependent)
            else:
                why = f"could not rebuild the parent state by replay ({result.error})"
                self._finish(dependent, _failure(STATE_LOST, why), queue)

    def _evict(self, running: dict[int, _Job], queue: deque, keep: int) -> None:
        """Close least recently used holders beyond the caps, sparing those this batch still needs."""
        total = sum(h.memory for h in self._holders.values())
        if len(self._holders) <= self.config.max_states and total <= self.max_state_memory:
            return
        needed = {keep} | {t.parent._node for t in queue if t.parent is not None}
        needed |= {j.task.parent._node for j in running.values() if j.task.parent is not None}
        for node in list(self._holders):
            if len(self._holders) <= self.config.max_states and total <= self.max_state_memory:
                break
            if node not in needed:
                holder = self._holders.pop(node)
                total -= holder.memory
                self._close_holder(holder)

    def _forget(self, holder: _Holder) -> None:
        """A holder died (or stopped answering): drop it; its states are rebuilt when needed."""
        holder.conn.close()
        if holder is self._zygote:
            self._zygote = None
            return
        for node, h in list(self._holders.items()):
            if h is holder:
                del self._holders[node]
                self._close_holder(h)


def _death(status: int | None, config: ExecutorConfig) -> ExecResult:
    """The result of a step whose process died; ``status`` as reported by its parent (None: unknown)."""
    if status is None:
        return _failure(KILLED, "the process died (cause unknown)", killed=True)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            cpu = config.cpu_time_s or config.timeout_s + 1
            return _failure(TIMEOUT, f"exceeded the CPU time limit of {cpu:g} s", timed_out=True, killed=True)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return _failure(KILLED, f"the process was killed by {name}", killed=True)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    return _failure(EXITED, f"the process exited with status {code} during the step", killed=True)


def _kill(pid: int | None) -> None:
    """SIGKILL a process and its process group (a job leads its own group)."""
    if not pid:
        return
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass


def run_program(steps: list[str], config: ExecutorConfig | None = None) -> list[ExecResult]:
    """One-shot: run a whole solution in a temporary executor (see :meth:`Executor.run_program`)."""
    with Executor(config) as ex:
        return ex.run_program(steps)


_LIVE: weakref.WeakSet[Executor] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for ex in list(_LIVE):
        ex.close()
