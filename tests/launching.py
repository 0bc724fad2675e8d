"""`accelerate launch` of a training script on 2 CPU processes (gloo), for the multi-process tests.

accelerate 1.x starts several CPU processes only through its multi-process launcher (`--cpu` alone starts one unless
MPI is installed); ACCELERATE_USE_CPU=1 keeps them on the CPU. Each launch takes a free port, and runs in a session of
its own so that a timeout kills the launcher *and* its workers (killing only the launcher would leave them running
into the next test)."""

import os
import signal
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: str, args, config_file: str | None = None) -> subprocess.Popen:
    """Start `script args` on 2 CPU processes: DDP, or what `config_file` says (e.g. FSDP)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1"]
    launcher += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    launcher += ["--config_file", config_file] if config_file else ["--multi_gpu"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [*launcher, script, *map(str, args)]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    """Wait for a launched run; assert it succeeded and return its stderr. On timeout every process it started is
    killed before the test fails, with the end of what the run wrote."""
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        raise AssertionError(f"the launched run did not finish in {timeout} s:\n{stderr[-4000:]}") from None
    assert process.returncode == 0, stderr[-4000:]
    return stderr
