# -*- coding: utf-8 -*-
"""Autobahn's testee server (`wstest -m testeeserver`) with the Host-header port check off.

Python 2.7 only: run it with the interpreter of .conformance/venv27 (setup_py27.sh).

    python2.7 testee_server.py [--host 127.0.0.1] [--port 0]

It builds exactly the factory that `wstest -m testeeserver -w ws://HOST:PORT` builds
(autobahntestsuite.testee.TesteeServerFactory: echo of every message, failByDrop=False,
accepts permessage-deflate/bzip2/snappy offers), then clears `factory.externalPort`.

Why: autobahn 0.10.9's WebSocketServerFactory.setSessionParameters() sets
`externalPort = port of the url` whenever a url is given, and
WebSocketServerProtocol.processHandshake() then fails any handshake whose Host header
names another port ("port %d in HTTP Host header ... does not match server listening
port"). Through wsproxy the Host header names the proxy's port. The check only runs
"if self.factory.externalPort" (autobahn/websocket/protocol.py, processHandshake), so
externalPort = None is autobahn's own "neither WS URL nor external port set" path: no
monkeypatching of protocol code. Nothing else on the server side reads externalPort
except the Location header of the (unused) hixie-76 handshake.

Port 0 picks a free port; the bound port is printed as "LISTENING <port>" on stdout
(flushed) once the socket accepts connections.
"""
import argparse
import sys

# wstest installs its reactor first ("don't touch: must be first import!"); do the same.
import autobahntestsuite.choosereactor  # noqa: F401

from twisted.internet import reactor

import autobahn
from autobahn.twisted.websocket import listenWS
from autobahntestsuite.testee import TesteeServerFactory


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args()

    factory = TesteeServerFactory("ws://%s:%d" % (args.host, args.port), debug=args.debug)
    factory.externalPort = None  # Host header may name any port (the proxy's)
    listener = listenWS(factory, interface=args.host)
    port = listener.getHost().port
    sys.stdout.write("LISTENING %d\n" % port)
    sys.stdout.write("autobahn %s, reactor %s\n" % (autobahn.version, reactor.__class__.__name__))
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
