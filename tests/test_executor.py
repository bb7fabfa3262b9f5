"""Tests for mathforge.executor: state carrying, limits, and hostile code (each must end cleanly)."""

import os
import shutil
import signal
import tempfile
import time

import pytest

from mathforge.executor import (
    EXITED,
    KILLED,
    SANDBOX_ERROR,
    SKIPPED,
    STATE_LOST,
    TIMEOUT,
    Executor,
    ExecutorConfig,
    run_program,
)

ROOT = os.geteuid() == 0
TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def children_before():
    return children_of(os.getpid())


@pytest.fixture(scope="module")
def ex(children_before):
    with Executor(ExecutorConfig(timeout_s=TIMEOUT_S)) as executor:
        yield executor


@pytest.fixture(scope="module")
def roomy(children_before):
    """Long timeout (crashes can take a while under load), small memory limit (for memory bombs)."""
    with Executor(ExecutorConfig(timeout_s=20, memory_bytes=768 << 20)) as executor:
        yield executor


def children_of(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (zombies included: an unreaped child is a leak too)."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.add(int(entry))
            except (OSError, IndexError):
                pass
    return out


def processes_of_uid(uid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    line = next(line for line in f if line.startswith("Uid:"))
                if int(line.split()[1]) == uid:
                    out.add(int(entry))
            except (OSError, StopIteration):
                pass
    return out


# --- normal operation -----------------------------------------------------------------------------------


def test_state_carries_across_steps(ex):
    r1 = ex.run("x = 2\nprint(x)")
    assert (r1.stdout, r1.ok, r1.error) == ("2\n", True, None)
    r2 = ex.run("print(x * 3)", parent=r1.state)
    assert r2.stdout == "6\n" and r2.state.depth == 2
    r3 = ex.run("import math\ny = math.factorial(x + 3)", parent=r2.state)
    r4 = ex.run("print(x, y, math.gcd(y, 84))", parent=r3.state)
    assert r4.stdout == "2 120 12\n"
    assert r4.state.codes() == ["x = 2\nprint(x)", "print(x * 3)", "import math\ny = math.factorial(x + 3)",
                                "print(x, y, math.gcd(y, 84))"]  # fmt: skip
    fresh = ex.run("print('x' in dir())")  # a fresh state does not see other trajectories
    assert fresh.stdout == "False\n"


def test_siblings_fork_from_the_process_that_ran_the_prefix(ex):
    prefix = ex.run("import os\nholder = os.getpid()\nprint('prefix ran')")
    assert prefix.stdout == "prefix ran\n"
    code = "print(os.getppid() == holder, n)"
    results = ex.run_many([(prefix.state, f"n = {i}\n{code}") for i in range(5)])
    assert [r.stdout for r in results] == [f"True {i}\n" for i in range(5)]  # no prefix output: not re-run
    deeper = ex.run("print(os.getppid() == holder, n + 10)", parent=results[3].state)
    assert deeper.stdout == "False 13\n"  # its parent is the sibling's process now


def test_sympy_numpy_and_stdlib_work_under_the_guard(ex):
    code = """
import sympy, numpy as np, itertools, collections, fractions, dataclasses, enum
x = sympy.symbols('x')
print(sympy.solve(x**2 - 5*x + 6, x))
print(sympy.factorint(360), sympy.nsimplify(0.125), sympy.Rational(2, 6))
print(sympy.lambdify(x, x**2 + 1)(3), sympy.integrate(sympy.sin(x), (x, 0, sympy.pi)))
print(np.linalg.solve(np.array([[2, 1], [1, 3]]), np.array([3, 5])).round(6).tolist())
print(sum(1 for _ in itertools.permutations(range(5))), fractions.Fraction(3, 9))
P = collections.namedtuple('P', 'a b'); print(P(1, 2))
@dataclasses.dataclass
class D:
    v: int
print(D(4), enum.Enum('C', 'RED').RED.name, 2**20000 % 1000)
"""
    r = ex.run(code)
    assert r.ok, r.error
    assert r.stdout.splitlines() == [
        "[2, 3]",
        "{2: 3, 3: 2, 5: 1} 1/8 1/3",
        "10 2",
        "[0.8, 1.4]",
        "120 1/3",
        "P(a=1, b=2)",
        "D(v=4) RED 376",
    ]


def test_exception_keeps_the_state_before_it(ex):
    r = ex.run("a = 1\nprint('before')\n1 / 0\nb = 2")
    assert (r.stdout, r.error_type, r.error_message) == ("before\n", "ZeroDivisionError", "division by zero")
    assert r.error == "ZeroDivisionError: division by zero" and not r.ok and not r.killed
    after = ex.run("print(a, 'b' in dir())", parent=r.state)  # notebook semantics
    assert after.stdout == "1 False\n"
    syntax = ex.run("print(", parent=r.state)
    assert syntax.error_type == "SyntaxError" and "never closed" in syntax.error_message


def test_files_persist_per_state_and_siblings_are_isolated(ex):
    r = ex.run("open('data.txt', 'w').write('abc')")
    a, b = ex.run_many(
        [
            (r.state, "open('data.txt', 'a').write('A')\nprint(open('data.txt').read())"),
            (r.state, "import time; time.sleep(0.2)\nprint(open('data.txt').read())"),
        ]
    )
    assert (a.stdout, b.stdout) == ("abcA\n", "abc\n")
    assert ex.run("print(open('data.txt').read())", parent=a.state).stdout == "abcA\n"


def test_evicted_states_are_rebuilt_by_replay():
    with Executor(ExecutorConfig(timeout_s=TIMEOUT_S, max_states=2)) as ex:
        state, states = None, []
        for i in range(5):
            r = ex.run(f"v{i} = {i} * 10\nprint('step', {i})", parent=state)
            assert r.stdout == f"step {i}\n"
            state = r.state
            states.append(state)
        assert len(ex._holders) <= 2
        # states[1] was evicted: continuing from it replays steps 0-1 once, silently, then forks siblings
        rs = ex.run_many([(states[1], "import os\nprint(v0 + v1, os.getppid())") for _ in range(3)])
        assert all(r.ok for r in rs), [r.error for r in rs]
        assert {r.stdout.split()[0] for r in rs} == {"10"}
        assert len({r.stdout.split()[1] for r in rs}) == 1  # one rebuilt holder served all three
        assert ex.run("print(v4 - v0)", parent=states[4]).stdout == "40\n"
        ex.release(states[4])
        assert ex.run("print(v3)", parent=states[4]).stdout == "30\n"


def test_run_program():
    results = run_program(
        ["a = 6", "b = a * 7\nprint(b)", "print(a + b)"], ExecutorConfig(timeout_s=TIMEOUT_S)
    )
    assert [r.stdout for r in results] == ["", "42\n", "48\n"] and all(r.ok for r in results)


def test_run_program_skips_steps_after_a_dead_one(ex):
    results = ex.run_program(["a = 1", "import os\nos._exit(3)", "print(a)"])
    assert results[0].ok
    assert (results[1].error_type, results[1].state) == (EXITED, None)
    assert results[2].error_type == SKIPPED


def test_output_is_exact_and_truncated_with_a_marker(ex):
    r = ex.run("for i in range(3):\n    print(i, 'é∑')\nprint(end='no newline')")
    assert r.stdout == "0 é∑\n1 é∑\n2 é∑\nno newline"
    big = ex.run("print('x' * 100_000_000)")  # 100 MB of output
    assert big.ok and big.output_truncated
    assert big.stdout == "x" * 65536 + f"\n... [output truncated: {100_000_001 - 65536} more characters]"


# --- hostile code: each ends with a clear error, within the limits ----------------------------------------


def test_infinite_loop_times_out_while_other_jobs_carry_on(ex):
    loop, normal, *more = ex.run_many(
        [(None, "while True:\n    pass"), (None, "print(sum(range(10)))")]
        + [(None, f"print({i})") for i in range(4)]
    )
    assert (loop.error_type, loop.timed_out, loop.killed, loop.state) == (TIMEOUT, True, True, None)
    assert loop.error == f"Timeout: exceeded the wall-clock limit of {TIMEOUT_S:g} s"
    assert normal.stdout == "45\n" and [r.stdout for r in more] == ["0\n", "1\n", "2\n", "3\n"]


def test_cpu_time_limit():
    with Executor(ExecutorConfig(timeout_s=10, cpu_time_s=1)) as ex:
        r = ex.run("while True:\n    pass")
        assert (r.error_type, r.timed_out) == (TIMEOUT, True)
        assert r.error_message == "exceeded the CPU time limit of 1 s"


def test_memory_bomb(roomy):
    bomb, normal = roomy.run_many(
        [(None, "x = []\nwhile True:\n    x.append(bytearray(10**7))"), (None, "print(7)")]
    )
    assert bomb.error_type == "MemoryError" and not bomb.timed_out
    assert normal.stdout == "7\n"
    r = roomy.run("import numpy as np\nnp.zeros(10**10)")
    assert r.error_type == "MemoryError" and r.error_message.startswith("Unable to allocate 74.5 GiB")
    roomy.release(bomb.state)  # a 768 MiB state: give it back (it is rebuilt, by replay, if used again)
    assert roomy.run("print(len(x) > 10)", parent=bomb.state).stdout == "True\n"


@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True:\n    os.fork()",
        "import os\nos.forkpty()",
        "import subprocess\nsubprocess.run(['echo', 'hi'])",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()",
        "import os\nos.posix_spawn('/bin/true', ['true'], {})",
        "import os\nos.execv('/bin/true', ['true'])",
        "import _posixsubprocess\n_posixsubprocess.fork_exec()",
        "import sys\ndel sys.modules['_posixsubprocess']\nimport _posixsubprocess",
    ],
)
def test_no_new_processes_or_threads(ex, code):
    r = ex.run(code)
    assert r.error_type == "SandboxViolation", r.error
    assert "not allowed" in r.error_message


def test_cannot_leave_the_session(ex):
    r = ex.run("import os\nos.setsid()")  # the session is how every sandbox process is found and killed
    assert (r.error_type, r.error_message) == ("PermissionError", "[Errno 1] Operation not permitted")


def test_threads(ex):
    r = ex.run("import threading\nthreading.Thread(target=print).start()")
    assert (r.error_type, r.error_message) == ("RuntimeError", "can't start new thread")  # seccomp


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="seccomp syscall table")
def test_seccomp_filter_alone():
    """The kernel layer by itself (in a forked child of the test, without the audit hook)."""
    from mathforge import _sandbox

    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            _sandbox.libc.prctl(_sandbox.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            assert _sandbox.install_seccomp()
            for attempt, bit in [
                (lambda: os.execv("/bin/true", ["true"]), 1),
                (lambda: __import__("socket").socket(), 2),
                (lambda: __import__("threading").Thread(target=print).start(), 4),
            ]:
                try:
                    attempt()
                except (OSError, RuntimeError):
                    code |= bit
            child = os.fork()  # plain processes are still allowed (the harness forks)
            if child == 0:
                os._exit(0)
            os.waitpid(child, 0)
            code |= 8
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 15


def test_os_system(ex):
    r = ex.run("import os\nprint(os.system('touch /tmp/mathforge_pwned'))")
    assert r.error_type == "SandboxViolation" and r.error_message.startswith("os.system is not allowed")
    assert not os.path.exists("/tmp/mathforge_pwned")


def test_writing_outside_the_work_dir(ex):
    for code in [
        "open('/tmp/mathforge_pwned', 'w').write('x')",
        "import os\nos.open('/tmp/mathforge_pwned', os.O_CREAT | os.O_WRONLY)",
        "open('../escape.txt', 'w')",
        "import os\nos.symlink('/tmp', 'link')\nopen('link/mathforge_pwned', 'w')",
        "import os\nos.remove('/etc/hostname')",
        "import shutil\nshutil.rmtree('/tmp')",
        "open('/proc/self/mem', 'wb')",
    ]:
        r = ex.run(code)
        assert r.error_type == "SandboxViolation", (code, r.error)
    assert not os.path.exists("/tmp/mathforge_pwned")
    inside = ex.run(
        "import os\nos.makedirs('a/b')\nopen('a/b/f.txt', 'w').write('ok')\nprint(open('a/b/f.txt').read())"
    )
    assert inside.stdout == "ok\n"
    too_big = ex.run("open('big', 'wb').write(b'0' * (20 << 20))")  # RLIMIT_FSIZE: 16 MiB
    assert too_big.error_type == "OSError" and "File too large" in too_big.error_message


def test_network(ex):
    for code in [
        "import socket\nsocket.socket()",
        "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)",
        "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)",
    ]:
        r = ex.run(code)
        assert r.error_type in ("SandboxViolation", "URLError"), (code, r.error)
        assert "network access" in r.error_message
    if ROOT:  # the kernel-level layer: a network namespace with nothing but a loopback device, down
        r = ex.run(
            "print(sorted(l.split(':')[0].strip() for l in open('/proc/self/net/dev').readlines()[2:]))"
        )
        assert r.stdout == "['lo']\n"


def test_sys_exit_and_os_exit(ex):
    r = ex.run("import sys\nv = 5\nsys.exit(3)")
    assert (r.error_type, r.error_message, r.killed) == ("SystemExit", "3", False)
    assert ex.run("print(v)", parent=r.state).stdout == "5\n"
    r = ex.run("import os\nprint('lost')\nos._exit(0)")
    assert (r.error_type, r.killed, r.state) == (EXITED, True, None)
    assert r.error_message == "the process exited with status 0 during the step"


def test_signal_tampering_then_looping(ex):
    code = """
import signal
for s in (signal.SIGTERM, signal.SIGALRM, signal.SIGXCPU, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGXCPU})
while True:
    pass
"""
    loop, normal = ex.run_many([(None, code), (None, "print('fine')")])
    assert (loop.error_type, loop.timed_out) == (TIMEOUT, True)
    assert normal.stdout == "fine\n"
    # A step's handlers and timers do not outlive it: the holder must survive this alarm.
    r = ex.run(
        "import signal, time\nsignal.signal(signal.SIGALRM, lambda *a: None)\nsignal.alarm(1)\nz = time.time_ns()\nprint(z)"
    )
    assert r.ok
    time.sleep(1.2)  # the alarm is due by now
    later = ex.run("print(z)", parent=r.state)
    assert later.stdout == r.stdout  # same z: the holder survived (a rebuilt one would have a new z)


def test_deep_recursion(ex, roomy):
    r = ex.run("def f(n):\n    return f(n + 1)\nf(0)")
    assert r.error_type == "RecursionError" and r.state is not None
    # with the limit raised, recursion through C (repr of a deeply nested list) overflows the C stack
    crash = roomy.run(
        "import sys\nsys.setrecursionlimit(10**8)\nx = []\nfor _ in range(10**5):\n    x = [x]\nrepr(x)"
    )
    assert (crash.error_type, crash.killed) == (KILLED, True)
    assert crash.error_message == "the process was killed by SIGSEGV"


def test_segfault(ex):
    r = ex.run("import ctypes\nctypes.string_at(0)")
    assert r.error_type == "SandboxViolation" and "ctypes" in r.error_message
    crash, normal = ex.run_many([(None, "import faulthandler\nfaulthandler._sigsegv()"), (None, "print(1)")])
    assert crash.error == "Killed: the process was killed by SIGSEGV" and crash.state is None
    assert normal.stdout == "1\n"


def test_ctypes_escapes(ex):
    for code in [
        "import ctypes\nctypes.CDLL(None).fork()",
        "import ctypes\nctypes.CDLL('libc.so.6').system(b'true')",
        "import ctypes\nctypes.pythonapi.Py_GetVersion",
        "import ctypes\nctypes.memmove(0, 0, 1)",
    ]:
        r = ex.run(code)
        assert r.error_type == "SandboxViolation" and "ctypes" in r.error_message, (code, r.error)


def test_killing_the_parent(ex):
    parent = ex.run("import os\nw = 9")
    for code in ["os.kill(os.getppid(), 9)", "os.killpg(os.getpgid(os.getppid()), 9)", "os.kill(1, 9)"]:
        r = ex.run(code, parent=parent.state)
        assert r.error_type == "SandboxViolation", (code, r.error)
    assert ex.run("print(w)", parent=parent.state).stdout == "9\n"


def test_hooks_and_limits_cannot_be_changed(ex):
    for code in [
        "import sys\nsys.addaudithook(lambda *a: None)\nimport os\nos.fork()",  # the new hook is refused
        "import sys\nsys.settrace(lambda *a: None)",
        "import sys\nsys.setprofile(lambda *a: None)",
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
    ]:
        r = ex.run(code)
        assert r.error_type == "SandboxViolation", (code, r.error)


def test_subverted_harness_still_cannot_spawn(ex):
    # User code can reach the harness's globals through frames (sympy and numpy need frame access) and make
    # the harness's next fork run os.system instead: the harness may fork, never run os.system.
    code = """
import sys, os, functools, types
frame = sys._getframe()
while frame.f_back is not None:
    frame = frame.f_back
fake = types.ModuleType('os'); fake.__dict__.update(os.__dict__)
fake.fork = functools.partial(os.system, 'touch /tmp/mathforge_pwned')
frame.f_globals['os'] = fake
"""
    planted = ex.run(code)
    assert planted.ok, planted.error
    r = ex.run("print('never')", parent=planted.state)
    assert r.error_type == SANDBOX_ERROR and r.stdout == ""
    assert not os.path.exists("/tmp/mathforge_pwned")
    assert ex.run("print('ok')").stdout == "ok\n"


def test_callbacks_planted_by_user_code_stay_restricted(ex):
    # These would run later, inside harness code (at the next fork, at garbage collection, ...).
    planted = ex.run(
        """
import os, builtins, json
os.register_at_fork(after_in_child=lambda: os.system('touch /tmp/mathforge_pwned'))
class Bomb:
    def __del__(self):
        os.system('touch /tmp/mathforge_pwned')
b = Bomb(); b.me = b; del b
json.dumps = lambda *a, **k: os.system('touch /tmp/mathforge_pwned')
builtins.compile = lambda *a, **k: os.system('touch /tmp/mathforge_pwned')
"""
    )
    assert planted.ok, planted.error
    r = ex.run("print('still works')", parent=planted.state)
    assert r.stdout == "still works\n"
    assert not os.path.exists("/tmp/mathforge_pwned")


FIND_CHANNEL = """
import os, json, struct
def channel():
    for fd in range(3, 256):
        try:
            if os.readlink(f'/proc/self/fd/{fd}').startswith('socket:'):
                return fd
        except OSError:
            pass
"""


def test_garbage_on_the_channel(ex):
    flood, normal = ex.run_many([(None, FIND_CHANNEL + "while True:\n    os.write(channel(), b'x' * 65536)"),
                                 (None, "print('fine')")])  # fmt: skip
    assert (flood.error_type, flood.killed, normal.stdout) == (KILLED, True, "fine\n")
    assert flood.error_message == "the step wrote garbage to its channel"


def test_forged_result_cannot_hang_the_executor(ex):
    forge = (
        FIND_CHANNEL
        + """
body = json.dumps({"t": "result", "stdout": "forged", "error_type": None, "memory": 0}).encode()
os.write(channel(), struct.pack('!I', len(body)) + body)
while True:
    pass
"""
    )
    r = ex.run(forge)
    assert r.stdout == "forged"  # the step's own word: it can lie about its output, nothing more
    later = ex.run("print(1)", parent=r.state)  # its process never serves: the next step times out
    assert (later.error_type, later.timed_out) == (TIMEOUT, True)
    assert r.state._node not in ex._holders  # and that process is killed and forgotten


@pytest.mark.skipif(not ROOT, reason="kernel-level isolation needs root")
def test_kernel_isolation(ex):
    assert ex.isolation == ["network namespace", "pid namespace", f"uid {ex.uid}", "seccomp"]
    fd, secret = tempfile.mkstemp()  # mode 0600, owned by root
    os.close(fd)
    try:
        r = ex.run(f"import os\nprint(os.getuid() != 0, os.getpid() < 1000)\nopen({secret!r})")
        assert r.stdout == "True True\n" and r.error_type == "PermissionError"
    finally:
        os.remove(secret)


@pytest.mark.skipif(not ROOT, reason="RLIMIT_NPROC applies to the dropped sandbox uid, i.e. as root")
def test_steps_wait_out_a_full_process_table():
    # 4 steps at once, 2 states kept, 6 processes allowed: forks meet the limit while evicted holders are
    # still exiting (before the fix 47 of these 60 steps failed with "fork failed: [Errno 11]"); a fork now
    # waits for them instead of failing the step
    with Executor(ExecutorConfig(timeout_s=10, max_states=2, max_workers=4, max_processes=6)) as ex:
        results = ex.run_many([(None, f"x = {i}\nprint(x * 2)") for i in range(60)])
    assert [r.error for r in results] == [None] * 60
    assert [r.stdout for r in results] == [f"{2 * i}\n" for i in range(60)]


def test_crashed_zygote_and_holders_are_replaced():
    with Executor(ExecutorConfig(timeout_s=TIMEOUT_S)) as ex:
        r = ex.run("k = 41")
        os.kill(ex._holders[r.state._node].conn.pid, signal.SIGKILL)  # a holder dies
        assert ex.run("print(k + 1)", parent=r.state).stdout == "42\n"  # rebuilt by replay
        zygote_pid = next(iter(children_of(ex._launcher.pid)))
        os.kill(zygote_pid, signal.SIGKILL)  # the zygote (and, with its pid namespace, every holder) dies
        time.sleep(0.1)
        assert ex.run("print(k + 2)", parent=r.state).stdout == "43\n"
        assert ex.run("print('fresh')").stdout == "fresh\n"


def test_isolation_off_still_guards():
    with Executor(ExecutorConfig(timeout_s=TIMEOUT_S, isolate=False)) as ex:
        assert ex.isolation == []  # no seccomp, namespaces or uid change
        r = ex.run(f"import os\nprint(os.getuid() == {os.getuid()})\nos.fork()")
        assert r.stdout == "True\n" and r.error_type == "SandboxViolation"


def test_no_processes_left_behind():
    before = children_of(os.getpid())
    ex = Executor(ExecutorConfig(timeout_s=1.0))
    launcher = ex._launcher.pid
    results = ex.run_many(
        [
            (None, "import time\ntime.sleep(60)"),
            (None, "import os\nos.fork()"),
            (None, "import faulthandler\nfaulthandler._sigsegv()"),
            (None, "x = 1"),
        ]
    )
    assert [r.error_type for r in results] == [TIMEOUT, "SandboxViolation", KILLED, None]
    assert ex.run("import time\ntime.sleep(60)", parent=results[3].state).timed_out
    ex.close()
    ex.close()  # idempotent
    assert children_of(os.getpid()) == before and launcher not in before
    if ROOT:
        assert processes_of_uid(ex.uid) == set()
    with pytest.raises(RuntimeError):
        ex.run("print(1)")


def test_state_lost_when_replay_fails():
    switch = tempfile.mkdtemp()
    os.chmod(switch, 0o755)  # readable by the sandbox uid
    hang = os.path.join(switch, "hang")
    code = f"import os, time\nwhile os.path.exists({hang!r}):\n    time.sleep(0.05)\nv = 1"
    try:
        with Executor(ExecutorConfig(timeout_s=TIMEOUT_S)) as ex:
            r = ex.run(code)
            assert r.ok
            open(hang, "w").close()  # from now on, replaying that step hangs
            ex.release(r.state)
            a, b = ex.run_many([(r.state, "print(v)"), (r.state, "print(v + 1)")])
            assert a.error_type == b.error_type == STATE_LOST
            assert a.error_message.startswith("could not rebuild the parent state by replay (Timeout")
            assert ex.run("print(3)").stdout == "3\n"
    finally:
        shutil.rmtree(switch)


def test_after_everything_a_normal_job_still_runs(ex, roomy, children_before):
    r = ex.run("import sympy\nprint(sympy.factorint(2**32 + 1))")
    assert (r.stdout, r.error) == ("{641: 1, 6700417: 1}\n", None)
    # and the only processes this test process has started (and not closed) are the two live launchers
    assert children_of(os.getpid()) - children_before == {ex._launcher.pid, roomy._launcher.pid}
