"""Worker side of :mod:`mathforge.executor`: launcher, zygote, state holders and jobs.

The executor starts this file as a script (``python -I -B _sandbox.py CONFIG_JSON``); importing it (the
executor and tests do, for helpers) has no side effects.  Process tree::

    launcher   caller's uid, own session; when its stdin closes, kills the zygote and its whole session
               and removes the working dirs
      zygote   pid 1 of new pid+network namespaces, sandbox uid, math libraries imported: holds the empty state
        job    forked per step from the process that holds the parent state; runs the step, reports, and
               from then on holds the new state (forking its own children for the next steps)

Every process runs the same loop (:func:`serve`): wait for a "run" request on its control socket, fork, and
let the child run the steps.  The child talks to the executor over its own socket (passed in with the
request) and, after reporting, serves as the holder of the state it built.  The executor never unpickles
anything from here: messages are length-prefixed JSON.
"""

import _socket
import builtins
import ctypes
import errno
import gc
import importlib
import math
import os
import resource
import select
import signal
import stat
import struct
import sys
import tempfile
import time
import types
from io import StringIO
from json import dumps, loads  # bound now: user code may rebind json.dumps

# Functions defined below look builtins up in this private copy, so user code rebinding builtins.compile,
# builtins.len, ... cannot change what the harness calls.
__builtins__ = dict(builtins.__dict__)

HEADER = struct.Struct("!I")
CLONE_NEWNET, CLONE_NEWPID = 0x40000000, 0x20000000
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 22, 36, 38
# seccomp, per machine: (AUDIT_ARCH, syscall numbers).  Denied to every sandbox process: running programs,
# sockets, tracing, namespaces and other kernel attack surface, leaving the launcher's session (which is
# how everything is found and killed); clone is checked for CLONE_THREAD.
SYSCALLS = {
    "x86_64": (0xC000003E, {
        "execve": 59, "execveat": 322, "socket": 41, "ptrace": 101, "process_vm_readv": 310,
        "process_vm_writev": 311, "unshare": 272, "setns": 308, "mount": 165, "bpf": 321, "userfaultfd": 323,
        "perf_event_open": 298, "keyctl": 250, "io_uring_setup": 425, "setsid": 112, "clone": 56,
        "clone3": 435,
    }),
    "aarch64": (0xC00000B7, {
        "execve": 221, "execveat": 281, "socket": 198, "ptrace": 117, "process_vm_readv": 270,
        "process_vm_writev": 271, "unshare": 97, "setns": 268, "mount": 40, "bpf": 280, "userfaultfd": 282,
        "perf_event_open": 241, "keyctl": 219, "io_uring_setup": 425, "setsid": 157, "clone": 220,
        "clone3": 435,
    }),
}  # fmt: skip
CLONE_THREAD = 0x10000
HOLDER_CPU_S = 60  # CPU seconds a process may use beyond its steps' limit (forking children as a holder)
WARMUP = """
import sympy, numpy
x = sympy.Symbol("x")
sympy.factorint(2**40 + 1); sympy.solve(x**2 - 2, x); sympy.simplify(sympy.sin(x)**2 + sympy.cos(x)**2)
sympy.sympify("x**2 + 1/2"); sympy.N(sympy.pi, 30); sympy.integrate(x**2, x); sympy.expand((x + 1)**5)
sympy.Rational(1, 3) + 1; sympy.isprime(97); sympy.binomial(10, 3); sympy.latex(x**2)
sympy.lambdify(x, x**2)(1.0)  # also resolves numpy's lazy attributes (numpy.ctypeslib needs real ctypes)
numpy.linalg.solve(numpy.eye(2), numpy.ones(2))
"""

libc = ctypes.CDLL(None, use_errno=True)
CFG = {}  # the executor's settings (see ExecutorConfig), from argv
NS = {}  # the user namespace: the state this process holds (a job's working copy while its steps run)
WORKDIR = None  # this state's working directory (files written by its steps), None for the empty state
set_guard_dir = None  # tells the audit hook which directory user code may write to


class SandboxViolation(RuntimeError):
    """Raised into user code that tries something the sandbox forbids (RuntimeError: see sys.addaudithook)."""


# --- messages ---------------------------------------------------------------------------------------------


def send(sock, msg):
    data = dumps(msg).encode()
    sock.sendall(HEADER.pack(len(data)) + data)


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def recv(sock):
    """The next message and the fds sent with it; (None, fds) once the executor has closed the socket."""
    head, ancillary, _, _ = sock.recvmsg(HEADER.size, _socket.CMSG_SPACE(16))
    fds = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += struct.unpack(f"{len(data) // 4}i", data[: len(data) // 4 * 4])
    if head and len(head) < HEADER.size:
        head += recv_exact(sock, HEADER.size - len(head)) or b""
    if len(head) < HEADER.size:
        return None, fds
    body = recv_exact(sock, HEADER.unpack(head)[0])
    return (loads(body) if body is not None else None), fds


# --- the holder loop and the job ----------------------------------------------------------------------------


def serve(ctl):
    """Hold this process's state: fork one child per "run" request.  Returns (request, fd) only in a child."""
    wake_r, wake_w = os.pipe()  # SIGCHLD wakes select() through this pipe, so exits are reported promptly
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children = {}  # pid -> job id, to report how a job's process ended
    while True:
        ready = select.select([ctl, wake_r], [], [])[0]
        if wake_r in ready:
            os.read(wake_r, 4096)
            reap(ctl, children)
        if ctl not in ready:
            continue
        msg, fds = recv(ctl)
        if msg is None:  # evicted, or the executor is gone: nothing left to hold
            os._exit(0)
        try:
            pid = fork_waiting(ctl, children)
        except OSError as e:
            send(ctl, {"t": "error", "job": msg["job"], "message": f"fork failed: {e}"})
            for fd in fds:
                os.close(fd)
            continue
        if pid == 0:
            os.close(wake_r)
            os.close(wake_w)
            ctl.close()
            reset_signals()
            return msg, fds[0]
        children[pid] = msg["job"]
        for fd in fds:
            os.close(fd)


FORK_WAIT_S = 5.0  # how long a holder waits out EAGAIN before reporting the fork as failed


def fork_waiting(ctl, children):
    """os.fork(), waiting out EAGAIN for up to FORK_WAIT_S: under load the sandbox uid's RLIMIT_NPROC is
    reached for a moment while evicted holders are still exiting, and a step must not fail for that."""
    delay, deadline = 0.002, time.monotonic() + FORK_WAIT_S
    while True:
        try:
            return os.fork()
        except OSError as e:
            if e.errno != errno.EAGAIN or time.monotonic() > deadline:
                raise
        reap(ctl, children)  # our own exited children count against the limit until reaped
        time.sleep(delay)
        delay = min(2 * delay, 0.1)


def reap(ctl, children):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        job = children.pop(pid, None)
        if job is not None:
            send(ctl, {"t": "exit", "job": job, "status": status})


def run_job(msg, fd):
    """In a freshly forked child: run the requested steps, report, and return the socket to serve on."""
    global WORKDIR
    ctl = _socket.socket(fileno=fd)
    os.setpgid(0, 0)  # own process group, so a timeout kills the job and anything it managed to start
    try:
        send(ctl, {"t": "hello"})  # carries our pid (SCM_CREDENTIALS) to the executor, for killing us
    except OSError:
        os._exit(0)  # the executor already gave up on this job
    parent_dir, WORKDIR = WORKDIR, msg["dir"]
    os.mkdir(WORKDIR, 0o700)
    if parent_dir:
        copy_tree(parent_dir, WORKDIR)  # files are part of the state: each child gets its own copy
    os.chdir(WORKDIR)
    tempfile.tempdir = WORKDIR
    set_guard_dir(os.path.realpath(WORKDIR))
    send(ctl, execute(msg["steps"]))
    return ctl


def copy_tree(src, dst):
    for entry in os.scandir(src):
        target = os.path.join(dst, entry.name)
        if entry.is_dir(follow_symlinks=False):
            os.mkdir(target)
            copy_tree(entry.path, target)
        elif entry.is_file(follow_symlinks=False):  # (symlinks and the like are not copied)
            with open(entry.path, "rb") as fin, open(target, "wb") as fout:
                fout.write(fin.read())


def execute(steps):
    """Run the steps in NS; report the output and error of the last one (earlier ones are a silent replay)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    step_cpu = math.ceil(used + CFG["cpu_time_s"] * len(steps))
    hard = step_cpu + HOLDER_CPU_S
    inherited = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if inherited != resource.RLIM_INFINITY:  # (it can only go down)
        hard = min(hard, inherited)
    # SIGXCPU ends a runaway step; the hard limit (SIGKILL) also bounds this process as a holder later,
    # even one that blocked SIGXCPU and faked its result to escape the wall-clock timeout.
    resource.setrlimit(resource.RLIMIT_CPU, (min(step_cpu, hard), hard))
    for code in steps:
        out = StringIO()
        sys.stdout, sys.stderr = out, StringIO()  # stderr is dropped
        error_type = error_message = None
        try:
            exec(compile(code, "<step>", "exec"), NS)
        except BaseException as e:  # noqa: BLE001 -- SystemExit and KeyboardInterrupt are user errors too
            error_type, error_message = describe(e)
            del e  # the traceback holds the step's frames
    text = out.getvalue()
    del out
    # Back to harness mode: nothing the step installed (handlers, timers, output streams) stays active.
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    reset_signals()
    gc.collect()
    gc.freeze()  # the state is frozen from now on; keeps children's GC from touching (copying) its pages
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
    limit, truncated = CFG["max_output_chars"], len(text) > CFG["max_output_chars"]
    if truncated:
        text = text[:limit] + f"\n... [output truncated: {len(text) - limit} more characters]"
    return {
        "t": "result",
        "stdout": text,
        "truncated": truncated,
        "error_type": error_type,
        "error_message": error_message,
        # pages this process has touched since the fork (copied from its parent or new): an O(1) estimate
        # of what it holds on its own, for the executor's LRU
        "memory": resource.getrusage(resource.RUSAGE_SELF).ru_minflt * resource.getpagesize(),
    }


def describe(e):
    """(type name, message) of an exception raised by user code, whose __str__ may itself misbehave."""
    try:
        name = type(e).__name__
        message = str(e)
    except BaseException:  # noqa: BLE001
        name, message = "Exception", "<unprintable exception>"
    if not isinstance(name, str) or not isinstance(message, str):
        name, message = "Exception", "<unprintable exception>"
    return name, message[:1000]


def reset_signals():
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for timer in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
        signal.setitimer(timer, 0)
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:  # Python's own defaults: SIGPIPE and SIGXFSZ ignored (they become OSErrors)
            signal.signal(sig, signal.SIG_IGN if sig in (signal.SIGPIPE, signal.SIGXFSZ) else signal.SIG_DFL)
        except (OSError, ValueError):
            pass


# --- the guard ----------------------------------------------------------------------------------------------

PROCESS_EVENTS = (
    "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.startfile",
    "subprocess.Popen", "pty.spawn",
)  # fmt: skip
DENIED = {event: "creating processes" for event in PROCESS_EVENTS} | {
    "os.kill": "sending signals to processes",
    "os.killpg": "sending signals to processes",
    "signal.pthread_kill": "sending signals to threads",
    "_thread.start_new_thread": "starting threads",
    "sys.addaudithook": "adding audit hooks",
    "sys.settrace": "setting a trace function",
    "sys.setprofile": "setting a profile function",
    "resource.setrlimit": "changing resource limits",
    "resource.prlimit": "changing resource limits",
}
DENIED_PREFIXES = {"ctypes": "ctypes (foreign calls)", "socket": "network access"}
DENIED_IMPORTS = {"_posixsubprocess": "creating processes", "ctypes": "ctypes", "_ctypes": "ctypes"}
# Events that write to the file system -> which of their arguments are paths that must lie in the work dir.
WRITE_PATHS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (1,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
    "os.mkfifo": (0,), "os.mknod": (0,), "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,),
    "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1), "shutil.chown": (0,),
}  # fmt: skip
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def violation(event, args, workdir):
    """What the event would do that user code may not, or None."""
    if event in DENIED:
        return DENIED[event]
    if event.partition(".")[0] in DENIED_PREFIXES:
        return DENIED_PREFIXES[event.partition(".")[0]]
    if event == "import":
        return DENIED_IMPORTS.get(args[0])
    if event == "open":
        path, flags = args[0], args[2]
        writes = isinstance(flags, int) and flags & WRITE_FLAGS
        return None if not writes or outside_ok(path, workdir) else f"writing outside the work dir ({path})"
    for i in WRITE_PATHS.get(event, ()):
        if i < len(args) and not outside_ok(args[i], workdir):
            return f"changing files outside the work dir ({args[i]})"
    return None


def outside_ok(path, workdir):
    if isinstance(path, int):  # an fd that was opened (and checked) before
        return True
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return real == os.devnull or (workdir is not None and (real == workdir or real.startswith(workdir + "/")))


def harness_may(event, args):
    """The few things the harness itself does: fork, wrap its sockets, set the CPU limit, write under base.

    Nothing else, ever: even user code that subverts harness code (it can reach harness frames and globals,
    as sympy and numpy need frame access) gets no os.system, exec, kill, ctypes or sockets out of it.
    """
    if event in ("open", "os.mkdir"):
        return violation(event, args, CFG["base"]) is None
    return event in ("os.fork", "socket.__new__", "resource.setrlimit")


def install_guard():
    """Audit hook: user code may not do what `violation` names; harness code may do what `harness_may` says.

    "Harness" means every frame on the stack runs harness code.  User code, and anything it planted that
    runs later inside harness code (__del__, at-fork callbacks, monkeypatched functions), is a frame of its
    own, so it stays restricted.  The hook and its state live only in this closure.
    """
    trusted, frame = set(), sys._getframe()
    todo = []
    while frame is not None:  # the module frame's constants hold every function's code (recursively)
        todo.append(frame.f_code)
        frame = frame.f_back
    while todo:
        code = todo.pop()
        if code not in trusted:
            trusted.add(code)
            todo += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    trusted = frozenset(trusted)
    workdir = [None]
    busy = [False]  # the hook's own frame walk raises audit events too
    getframe = sys._getframe

    def hook(event, args):
        if busy[0]:
            return
        busy[0] = True
        try:
            problem = violation(event, args, workdir[0])
            if problem is None:
                return
            frame = getframe(1)
            while frame is not None and frame.f_code in trusted:
                frame = frame.f_back
            if frame is None and harness_may(event, args):  # only harness code on the stack
                return
        finally:
            busy[0] = False
        raise SandboxViolation(f"{event} is not allowed in the sandbox ({problem})")

    sys.addaudithook(hook)
    return lambda path: workdir.__setitem__(0, path)


def deny_spawn(*args, **kwargs):
    raise SandboxViolation("_posixsubprocess.fork_exec is not allowed in the sandbox (creating processes)")


def seal_modules():
    """Replace modules that act without raising audit events with stubs that refuse.

    _posixsubprocess.fork_exec spawns silently; ctypes' memmove, memset and function pointers made from
    addresses call C silently.  Every reference to the real ctypes (numpy keeps one) gets the stub, and
    re-importing either module is an audited "import", denied above.
    """
    stub = types.ModuleType("ctypes")

    def refuse(name):
        raise SandboxViolation(f"ctypes.{name} is not allowed in the sandbox (ctypes)")

    stub.__getattr__ = refuse
    real = [m for name, m in sys.modules.items() if name == "_ctypes" or name.split(".")[0] == "ctypes"]
    for module in list(sys.modules.values()):
        for key, value in list(getattr(module, "__dict__", {}).items()):
            if any(value is m for m in real):
                setattr(module, key, stub)
    for name in [name for name, m in sys.modules.items() if any(m is r for r in real)]:
        sys.modules[name] = stub
    spawn = sys.modules.get("_posixsubprocess") or types.ModuleType("_posixsubprocess")
    spawn.fork_exec = deny_spawn
    sys.modules["_posixsubprocess"] = spawn


def install_seccomp():
    """Kernel-level filter (inherited by every child): see SYSCALLS.  False on an unknown machine."""
    if os.uname().machine not in SYSCALLS:
        return False
    audit_arch, nr = SYSCALLS[os.uname().machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF opcodes (absolute word load, jumps)
    allow, kill, deny, nosys = 0x7FFF0000, 0x80000000, 0x50000 | errno.EPERM, 0x50000 | errno.ENOSYS
    program, labels = [], {}
    emit = lambda code, k=0, jt=None, jf=None: program.append((code, k, jt, jf))  # noqa: E731
    emit(ld, 4)  # seccomp_data.arch
    emit(jeq, audit_arch, jf="kill")
    emit(ld, 0)  # seccomp_data.nr
    emit(jge, 0x40000000, jt="deny")  # x32 ABI numbers
    emit(jeq, nr["clone3"], jt="nosys")  # its flags are behind a pointer: ENOSYS makes libc use clone
    emit(jeq, nr["clone"], jt="clone")
    for name, number in nr.items():
        if name not in ("clone", "clone3"):
            emit(jeq, number, jt="deny")
    emit(ret, allow)
    labels["clone"] = len(program)
    emit(ld, 16)  # low word of args[0]: clone flags
    emit(jset, CLONE_THREAD, jt="deny")
    emit(ret, allow)
    for name, action in (("deny", deny), ("nosys", nosys), ("kill", kill)):
        labels[name] = len(program)
        emit(ret, action)
    offset = lambda i, label: 0 if label is None else labels[label] - i - 1  # noqa: E731
    raw = b"".join(
        struct.pack("HBBI", c, offset(i, t), offset(i, f), k) for i, (c, k, t, f) in enumerate(program)
    )
    filters = ctypes.create_string_buffer(raw)

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Program(len(program), ctypes.addressof(filters))
    return libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0) == 0  # 2: SECCOMP_MODE_FILTER


# --- start-up -----------------------------------------------------------------------------------------------


def main():
    global CFG, NS, set_guard_dir
    CFG = loads(sys.argv[1])
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != here]
    isolation = []
    if CFG["isolate"] and os.geteuid() == 0:
        if libc.unshare(CLONE_NEWNET | CLONE_NEWPID) == 0:
            isolation += ["network namespace", "pid namespace"]
        elif libc.unshare(CLONE_NEWNET) == 0:
            isolation += ["network namespace"]
    zygote = os.fork()
    if zygote:  # launcher: our stdin closes when the executor closes us or dies; then everything goes
        os.close(CFG["ctl"])
        try:
            os.read(0, 1)
        finally:
            os.kill(zygote, signal.SIGKILL)  # with a pid namespace, that alone ends every sandbox process
            os.waitpid(zygote, 0)
            kill_session(os.getsid(0), spare=os.getpid())
            remove_tree(CFG["base"])  # the working dirs, also when the caller died without closing us
            os._exit(0)
    if "pid namespace" not in isolation:  # (as pid 1 we adopt orphans anyway)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    limit(resource.RLIMIT_AS, CFG["memory_bytes"])
    limit(resource.RLIMIT_FSIZE, CFG["max_file_bytes"])
    limit(resource.RLIMIT_CORE, 0)
    if CFG["isolate"] and os.geteuid() == 0:
        reach_python_files()
        limit(resource.RLIMIT_NPROC, CFG["max_processes"])  # counted per uid, so only after the uid drop
        os.setgroups([])
        os.setgid(CFG["uid"])
        os.setuid(CFG["uid"])
        isolation.append(f"uid {CFG['uid']}")
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
    os.chdir(CFG["base"])
    sys.set_int_max_str_digits(0)  # math code prints big integers; the time limit bounds the cost
    sys.dont_write_bytecode = True
    for name in CFG["preload"]:
        importlib.import_module(name)
    if {"sympy", "numpy"} <= set(CFG["preload"]):
        exec(WARMUP, {})  # first calls import submodules and fill caches: pay that once, here
    user_main = types.ModuleType("__main__")  # user code runs as __main__ (pickle, dataclasses work)
    user_main.__builtins__ = builtins  # the real builtins; exec would otherwise hand out our private copy
    globals()["_self"] = sys.modules["__main__"]  # keep our module alive; user code can no longer reach it
    NS = user_main.__dict__
    sys.modules["__main__"] = user_main
    if CFG["isolate"] and install_seccomp():  # needs no_new_privs (or root): works without root too
        isolation.append("seccomp")
    seal_modules()
    gc.collect()
    gc.freeze()
    set_guard_dir = install_guard()
    ctl = _socket.socket(fileno=CFG["ctl"])
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # user code writing to the raw fds must not reach the caller's terminal
        os.dup2(devnull, fd)
    os.close(devnull)
    send(ctl, {"t": "ready", "isolation": isolation})
    msg, fd = serve(ctl)
    while True:  # only forked children get here; they run a job, then hold its state
        msg, fd = serve(run_job(msg, fd))


def session_members(sid):
    """Pids of the live processes in session ``sid``, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    state, _, _, session = f.read().rsplit(")", 1)[1].split()[:4]
            except (OSError, ValueError):
                continue
            if int(session) == sid and state != "Z":
                pids.append(int(entry))
    return pids


def kill_session(sid, spare=None, timeout=2.0):
    """SIGKILL every process in session ``sid`` (but ``spare``) until none is left, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while (pids := [p for p in session_members(sid) if p != spare]) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def remove_tree(path):
    try:
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                remove_tree(entry.path)
            else:
                os.unlink(entry.path)
        os.rmdir(path)
    except OSError:
        pass


def limit(which, value):
    if value is not None:
        resource.setrlimit(which, (value, value))


def reach_python_files():
    """Keep the interpreter's own files importable after the uid drop.

    Python may live where the sandbox uid cannot look (e.g. under /root, mode 0700).  A directory fd opened
    now, as root, stays usable: /proc/self/fd/N resolves without walking the unreadable ancestors.  Only
    sys.path entries are opened this way; the rest of such a tree stays closed.
    """
    alias = {}
    for path in sys.path:
        if path not in alias and os.path.isdir(path) and not world_readable(path):
            alias[path] = f"/proc/self/fd/{os.open(path, os.O_RDONLY | os.O_DIRECTORY)}"
    if not alias:
        return
    sys.path[:] = [alias.get(p, p) for p in sys.path]
    for module in list(sys.modules.values()):  # packages imported already search their own __path__
        paths = getattr(module, "__path__", None)
        if isinstance(paths, list):
            for i, p in enumerate(paths):
                for old, new in alias.items():
                    if p == old or p.startswith(old + "/"):
                        paths[i] = new + p[len(old) :]
    sys.path_importer_cache.clear()


def world_readable(path):
    path = os.path.abspath(path)
    if not os.stat(path).st_mode & stat.S_IROTH:
        return False
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


if __name__ == "__main__":
    main()
