"""Run the real binary in a pseudo-terminal of a given size (stdlib ``pty``), as a person at a
terminal of that width would see it; and in a pipe, as a script would."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def in_terminal(args: list[str], env: dict[str, str], width: int, height: int = 60,
                timeout: float = 120, answer: tuple[str, str] | None = None
                ) -> tuple[int, str]:
    """Exit code and screen text (colours removed, lines without trailing spaces) of
    ``python -m prefect_dr ARGS`` with stdin, stdout and stderr on a ``width``-column
    terminal. COLUMNS is unset: the width comes from the terminal itself. ``answer``
    (prompt, reply): type ``reply`` once ``prompt`` has appeared."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([sys.executable, "-m", "prefect_dr", *args], env=env, stdin=slave,
                            stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not data or time.monotonic() > deadline:
            break
        chunks.append(data)
        if answer and answer[0].encode() in b"".join(chunks):
            os.write(master, answer[1].encode() + b"\r")
            answer = None
    os.close(master)
    code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    text = ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r\n", "\n")
    return code, "\n".join(line.rstrip() for line in text.split("\n"))


def in_pipe(args: list[str], env: dict[str, str], timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    """``python -m prefect_dr ARGS`` with stdout and stderr on pipes (COLUMNS unset)."""
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "prefect_dr", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)
