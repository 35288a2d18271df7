"""twistd plugin: `twistd mailgateway`. Only the ServiceMaker lives here.

No __init__.py in twisted/ or twisted/plugins/: an uninstall would otherwise
delete Twisted's own.
"""

from twisted.application.service import ServiceMaker

mailgateway = ServiceMaker(
    "mailgateway",
    "gateway.tap",
    "Mail gateway: ESMTP, durable queue, Maildir delivery, POP3",
    "mailgateway",
)
