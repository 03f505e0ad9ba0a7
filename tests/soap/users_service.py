"""A SOAP 1.1 service for tests/soap.rs, built with spyne (a standard Python SOAP toolkit).

`python3 users_service.py` listens on 127.0.0.1, a free port, and prints `ready PORT` once it
accepts connections. It answers only a SOAP 1.1 call as a client library would make it: a POST to
/soap/users with `Content-Type: text/xml` and `SOAPAction: "GetUser"` (else 400, plain text). One operation, GetUser(user_id) -> User, in namespace urn:frontdesk:users:
user 13 raises a Server fault (the user store is down), an unknown user a Client fault.
"""

import logging
import socketserver
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from spyne import Application, ComplexModel, Fault, Integer, ServiceBase, Unicode, rpc
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication

NS = "urn:frontdesk:users"


class User(ComplexModel):
    __namespace__ = NS
    id = Integer
    name = Unicode
    email = Unicode


USERS = {
    7: User(id=7, name="Ada Lovelace", email="ada@example.com"),
    8: User(id=8, name="Grace Hopper & co", email="grace@example.com"),
}


class UserService(ServiceBase):
    @rpc(Integer, _returns=User)
    def GetUser(ctx, user_id):
        if user_id == 13:
            raise Fault(faultcode="Server", faultstring="the user store is down")
        user = USERS.get(user_id)
        if user is None:
            raise Fault(faultcode="Client.NotFound", faultstring="no user %s" % user_id)
        return user


def strict(app):
    """What a SOAP 1.1 client must send: a POST to /soap/users, text/xml, the SOAPAction."""

    def check(environ, start_response):
        problems = []
        if environ.get("REQUEST_METHOD") != "POST":
            problems.append("method %s" % environ.get("REQUEST_METHOD"))
        if environ.get("PATH_INFO") != "/soap/users":
            problems.append("path %s" % environ.get("PATH_INFO"))
        if not environ.get("CONTENT_TYPE", "").startswith("text/xml"):
            problems.append("content-type %s" % environ.get("CONTENT_TYPE"))
        if environ.get("HTTP_SOAPACTION") != '"GetUser"':
            problems.append("soapaction %s" % environ.get("HTTP_SOAPACTION"))
        if problems:
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [("not a SOAP 1.1 call: " + ", ".join(problems)).encode()]
        return app(environ, start_response)

    return check


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def main():
    # Faults are answers here, not errors worth a traceback.
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("spyne").setLevel(logging.CRITICAL)
    app = Application(
        [UserService],
        tns=NS,
        in_protocol=Soap11(validator="lxml"),
        out_protocol=Soap11(),
    )
    server = make_server(
        "127.0.0.1", 0, strict(WsgiApplication(app)), server_class=ThreadingServer,
        handler_class=QuietHandler,
    )
    print("ready %d" % server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
