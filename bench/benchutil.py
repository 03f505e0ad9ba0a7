#!/usr/bin/env python3
"""Small helpers for bench/run.sh (python3 only, no dependencies).

  benchutil.py ports N                 print N distinct free 127.0.0.1 ports
  benchutil.py wait PORT TIMEOUT PID   wait until 127.0.0.1:PORT accepts;
                                       fail early if process PID is gone
  benchutil.py get PORT [SCHEME]       GET SCHEME://127.0.0.1:PORT/ (http or https,
                                       certificate not verified), print body
"""
import os
import socket
import ssl
import sys
import time
import urllib.request


def ports(n):
    # Hold all sockets open while picking so the ports are distinct.
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def wait(port, timeout, pid):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid and not os.path.exists("/proc/%d" % pid):
            sys.exit("process %d exited before 127.0.0.1:%d accepted" % (pid, port))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("127.0.0.1:%d did not accept within %ss" % (port, timeout))


def get(port, scheme="http"):
    # No proxy from the environment: talk to 127.0.0.1 directly. The bench certificate is
    # self-signed: checking the body is the point, not the certificate.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )
    with opener.open("%s://127.0.0.1:%d/" % (scheme, port), timeout=5) as r:
        sys.stdout.write(r.read().decode())


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "ports":
        ports(int(sys.argv[2]))
    elif cmd == "wait":
        wait(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "get":
        get(int(sys.argv[2]), *sys.argv[3:4])
    else:
        sys.exit("unknown command %s" % cmd)
