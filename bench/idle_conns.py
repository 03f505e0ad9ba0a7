#!/usr/bin/env python3
"""Open N idle HTTP/1.1 keep-alive connections to HOST:PORT and hold them.

Each connection connects, sends one `GET /` request, reads the complete
response and then stays open, idle. Used by bench/run.sh to measure the
proxy's memory per idle keep-alive connection.

Protocol on stdin/stdout (run.sh drives it as a bash coproc):
  stdout "READY <ok> <failed>"  once every connection was tried
  stdin  "check"            -> stdout "OPEN <k>": how many of the <ok>
                               connections the server has not closed
  stdin  EOF                -> close everything and exit
"""
import select
import socket
import sys


def read_response(sock):
    """Read one full HTTP/1.1 response (Content-Length or chunked)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before response headers")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ")
    if len(status) < 2 or not status[1].startswith(b"2"):
        raise ConnectionError("bad status line %r" % lines[0])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if b"content-length" in headers:
        want = int(headers[b"content-length"])
        while len(body) < want:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid body")
            body += chunk
    elif headers.get(b"transfer-encoding", b"").endswith(b"chunked"):
        while not (body.endswith(b"0\r\n\r\n")):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid chunked body")
            body += chunk
    else:
        raise ConnectionError("response without length: not keep-alive")
    if headers.get(b"connection") == b"close":
        raise ConnectionError("server sent Connection: close")


def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    request = ("GET / HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: idle_conns\r\n"
               "Accept: */*\r\n\r\n" % (host, port)).encode()
    socks, failed, first_error = [], 0, None
    for _ in range(n):
        s = None
        try:
            s = socket.create_connection((host, port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(request)
            read_response(s)
            socks.append(s)
        except (OSError, ValueError) as e:
            failed += 1
            first_error = first_error or repr(e)
            if s is not None:
                s.close()
    if first_error:
        print("idle_conns: %d of %d failed, first error: %s"
              % (failed, n, first_error), file=sys.stderr)
    print("READY %d %d" % (len(socks), failed), flush=True)

    for line in sys.stdin:
        if line.strip() == "check":
            # A connection the server closed (or that got unexpected data)
            # polls readable / hung up; a healthy idle one shows nothing.
            poller = select.poll()
            for s in socks:
                poller.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
            gone = len(poller.poll(0))
            print("OPEN %d" % (len(socks) - gone), flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
