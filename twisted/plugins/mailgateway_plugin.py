"""twistd plugin: `twistd mailgateway`. Only the ServiceMaker lives here.

No __init__.py in twisted/ or twisted/plugins/: an uninstall would otherwise
delete Twisted's own.
"""

from twisted.application.service import ServiceMaker

mailgateway = ServiceMaker(
    "mailgateway",
    "gateway.tap",
    "Mail gateway: ESMTP relay and submission, durable queue, Maildir, POP3, IMAP4, TLS front",
    "mailgateway",
)
