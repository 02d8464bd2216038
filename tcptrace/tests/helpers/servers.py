"""Real server processes for the kernel tests: how production hosts hold listening sockets.

Each mode prints one "ready ..." line once it listens, then what it accepted ("accepted PORT",
the client's port), flushed, so the test knows which process took which connection.

  prefork ADDR PORT WORKERS   a master listens, then forks WORKERS processes that accept
                              (nginx without reuseport); the master only waits
  listen ADDR PORT [reuseport] one process listens (with SO_REUSEPORT) and accepts
  handoff ADDR PORT COUNT     a launcher listens, starts a worker that inherits the socket,
                              and exits; the worker accepts COUNT connections, then exits
  backlog ADDR PORT BACKLOG   listens with that backlog and never accepts
"""

import os
import signal
import socket
import subprocess
import sys


def say(line):
    print(line, flush=True)


def listener(addr, port, reuseport=False, backlog=128):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((addr, port))
    s.listen(backlog)
    return s


def serve(s, count=None):
    """Accepts, tells whom, and closes each connection once its client has."""
    served = 0
    while count is None or served < count:
        conn, peer = s.accept()
        say(f"accepted {peer[1]}")
        while conn.recv(4096):
            pass
        conn.close()
        served += 1


def wait_for_termination():
    """Until SIGTERM or SIGINT (blocked first, so neither kills the process before)."""
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    signal.sigwait(signals)


def main():
    mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "prefork":
        s = listener(addr, port)
        workers = []
        for _ in range(int(sys.argv[4])):
            pid = os.fork()
            if pid == 0:
                serve(s)
                os._exit(0)
            workers.append(pid)
        say(f"ready {os.getpid()} " + ",".join(map(str, workers)))
        wait_for_termination()
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
    elif mode == "listen":
        s = listener(addr, port, reuseport=sys.argv[4:] == ["reuseport"])
        say(f"ready {os.getpid()}")
        serve(s)
    elif mode == "handoff":
        s = listener(addr, port)
        worker = subprocess.Popen(
            [sys.executable, __file__, "worker", str(s.fileno()), sys.argv[4]],
            pass_fds=[s.fileno()],
        )
        say(f"ready {os.getpid()} {worker.pid}")
    elif mode == "worker":
        # `addr` is the inherited descriptor, `port` the connections to serve.
        s = socket.socket(fileno=int(addr))
        serve(s, count=port)
    elif mode == "backlog":
        s = listener(addr, port, backlog=int(sys.argv[4]))
        say(f"ready {os.getpid()}")
        wait_for_termination()
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
