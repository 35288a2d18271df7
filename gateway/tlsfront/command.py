"""`mailgateway tlsfront`: the front on its own, the way people use stunnel.

  mailgateway tlsfront --accept tcp:465 --connect tcp:127.0.0.1:25 \\
      --cert mail.pem --key mail.key [--cert other.pem --key other.key] \\
      [--proxy v2|v1|none] [--protocol smtp|pop3|imap] [--client-ca CA --client-verify ...]
  mailgateway tlsfront --config fronts.toml     # [[tlsfront]] sections only

gateway/cli.py adds the subcommand with add_arguments() and hands run() the
global reactor (only cli.py and tap.py import it). Logs go to stderr;
SIGHUP reloads the certificates.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from twisted.internet import error
from twisted.logger import ILogObserver, globalLogBeginner
from zope.interface import implementer

from gateway import config
from gateway.errors import ConfigError
from gateway.logformat import classic_line
from gateway.tlsfront.certs import CertificateError
from gateway.tlsfront.service import FrontsService


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accept", help="server endpoint for TLS clients (tcp:465:interface=...)")
    p.add_argument("--connect", help="client endpoint of the plaintext server "
                   "(tcp:HOST:PORT, unix:PATH)")
    p.add_argument("--cert", action="append", default=[],
                   help="PEM certificate (chain); repeat for SNI, the first is the default")
    p.add_argument("--key", action="append", default=[], help="PEM private key, one per --cert")
    p.add_argument("--proxy", choices=config.PROXY_VERSIONS, default="v2",
                   help="PROXY header sent to the backend (default v2; none for servers "
                   "that know no PROXY protocol)")
    p.add_argument("--protocol", choices=("smtp", "pop3", "imap"), default="",
                   help="what the backend speaks: greet clients properly when it is down")
    p.add_argument("--client-ca", default="", help="PEM CA file for client certificates")
    p.add_argument("--client-verify", choices=config.CLIENT_VERIFY, default="none")
    p.add_argument("--min-version", choices=config.TLS_VERSIONS, default="1.2")
    p.add_argument("--name", default="", help="name in the logs")
    p.add_argument("--hostname", default="", help="host name in the 'not available' greeting")


def fronts_from_arguments(args: argparse.Namespace) -> tuple[config.FrontSettings, ...]:
    """The fronts of --config, or the one front the other options describe."""
    if getattr(args, "config", None):
        if args.accept or args.connect or args.cert:
            raise ConfigError([("<command line>", "", "give --config or --accept/--connect/"
                                "--cert/--key, not both")])
        return config.load_fronts(args.config)
    if len(args.cert) != len(args.key):
        raise ConfigError([("<command line>", "--key", "give one --key for each --cert")])
    entry: dict[str, Any] = {
        "accept": args.accept or "", "connect": args.connect or "", "proxy": args.proxy,
        "protocol": args.protocol, "client_verify": args.client_verify,
        "client_ca": args.client_ca, "min_version": args.min_version,
        "hostname": args.hostname,
        "certificates": [{"certificate": c, "private_key": k}
                         for c, k in zip(args.cert, args.key, strict=True)],
    }
    entry["name"] = args.name or "tlsfront"
    return config.parse_fronts({"tlsfront": [entry]}, "<command line>")


@implementer(ILogObserver)
class LogLines:
    """twisted.logger's text lines (textFileLogObserver's), written cheaply: formatted by
    gateway/logformat.py, the gateway's own log writers' formatter (the time prefix
    made once a second, the text by str.format_map, Twisted's own formatting for
    failures and anything unusual)."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def __call__(self, event: dict) -> None:
        line = classic_line(event)
        if line:
            self.stream.write(line)
            self.stream.flush()


def run(args: argparse.Namespace, reactor: Any) -> int:
    """Run the fronts until SIGINT/SIGTERM; 1 with a message when they cannot start."""
    try:
        fronts = fronts_from_arguments(args)
        top = FrontsService(fronts, reactor, install_sighup=True)
    except ConfigError as e:
        for file, key, reason in e.problems:
            print(f"{file}: {key}: {reason}" if key else f"{file}: {reason}", file=sys.stderr)
        return 1
    except CertificateError as e:
        print(f"mailgateway tlsfront: {e}", file=sys.stderr)
        return 1
    globalLogBeginner.beginLoggingTo([LogLines(sys.stderr)], redirectStandardIO=False)
    try:
        top.startService()
    except error.CannotListenError as e:
        print(f"mailgateway tlsfront: {e}", file=sys.stderr)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return 0
