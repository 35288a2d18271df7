"""A small authoritative DNS server on 127.0.0.1 (UDP and TCP, one free port) for relay tests.

Built on dnspython's message codec and the standard socketserver, run in
threads. Records are {(name, type): [rdata text, ...]}; a name that has no
record at all answers NXDOMAIN, a name with other types answers NOERROR with
no data (so "no MX" means implicit MX), and the value "SERVFAIL" answers that;
"DROP" never answers (a name server that hangs).
"""

from __future__ import annotations

import socketserver
import struct
import threading

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

Records = dict[tuple[str, str], "list[str] | str"]


class DNSServer:
    def __init__(self, records: Records):
        self.records = {(n.lower().rstrip("."), t.upper()): v for (n, t), v in records.items()}
        self.queries: list[tuple[str, str]] = []
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        self.port = 0

    def answer(self, wire: bytes, limit: int = 65535) -> bytes | None:
        """The reply to wire; over UDP (limit: 512, or the client's EDNS size) a reply
        that does not fit is sent empty with TC set, so the client asks again over TCP."""
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        # RA as well: a forwarding resolver (libunbound in opendkim, bench/) takes a
        # server without it for lame.
        response.flags |= dns.flags.AA | dns.flags.RA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        value = self.records.get((name, rdtype))
        if value == "DROP":
            return None
        if value == "SERVFAIL":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif value is not None:
            response.answer.append(dns.rrset.from_text_list(
                question.name, 60, dns.rdataclass.IN, question.rdtype, value))
        elif not any(n == name for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        if limit < 65535:
            limit = max(512, query.payload) if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()

    def start(self, port: int = 0) -> DNSServer:
        """Serve on port (0: a free one, found for UDP and TCP alike)."""
        server = self

        class UDPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = server.answer(data, limit=512)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class TCPHandler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    head = self.rfile.read(2)
                    if len(head) < 2:
                        return
                    (length,) = struct.unpack("!H", head)
                    reply = server.answer(self.rfile.read(length))
                    if reply is None:
                        return
                    self.wfile.write(struct.pack("!H", len(reply)) + reply)

        for _ in range(20):  # find a port free for both UDP and TCP
            udp = socketserver.ThreadingUDPServer(("127.0.0.1", port), UDPHandler)
            self.port = udp.server_address[1]
            tcp = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), TCPHandler,
                                                  bind_and_activate=False)
            try:
                tcp.allow_reuse_address = True
                tcp.server_bind()
                tcp.server_activate()
            except OSError:  # the TCP port is taken: close both sockets, try another
                tcp.server_close()
                udp.server_close()
                continue
            break
        else:
            raise RuntimeError("no free port for the DNS server")
        for s in (udp, tcp):
            s.daemon_threads = True
            t = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05},
                                 daemon=True)
            t.start()
            self._servers.append(s)
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()
        for t in self._threads:
            t.join(timeout=5)


def resolve_with(port: int, name: str, rdtype: str) -> list[str]:
    """A direct query (to check the helper itself), through dnspython's resolver."""
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = port
    return [x.to_text() for x in r.resolve(name, rdtype)]

