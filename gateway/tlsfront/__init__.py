"""tlsfront: the TLS-terminating proxy, usable alone in front of any plaintext server.

Implicit TLS (RFC 8314: 465 submissions, 993 imaps, 995 pop3s) is terminated
here and the decrypted stream forwarded to a plaintext listener, with a PROXY
header first that tells the backend who the client really is and how it
spoke TLS. Like stunnel, from [[tlsfront]] sections inside `twistd
mailgateway` or alone as `mailgateway tlsfront`.

  proxyheader.py  PROXY v1/v2 headers with the TLS TLVs
  certs.py        TLS contexts, SNI, reload (FrontTLS)
  relay.py        one connection: TLS side <-> backend, flow control, timeouts, the log line
  backend.py      the connect to the backend (at once, for plain addresses)
  listener.py     limits and the factory (FrontFactory)
  service.py      twistd services, SIGHUP and file-change reload
  command.py      `mailgateway tlsfront`

Uses nothing from gateway but the kernel (config, errors).
"""

from gateway.tlsfront.certs import CertificateError, FrontTLS
from gateway.tlsfront.listener import FrontFactory
from gateway.tlsfront.service import FrontService, FrontsService

__all__ = ["CertificateError", "FrontFactory", "FrontService", "FrontTLS", "FrontsService"]
