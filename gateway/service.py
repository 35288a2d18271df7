"""The composition root: the one place that wires concrete classes of several stages.

tap.py hands it the Settings and the reactor; it returns a twistd service
whose children are the listeners (endpoint strings from [listen]) and the
queue runner. Start-up makes the state directories and, when no certificate
is configured, a self-signed one.
"""

from __future__ import annotations

from twisted.application import service, strports
from twisted.internet import threads
from twisted.logger import Logger

from gateway import tls
from gateway.accept.policy import RelayPolicy
from gateway.accept.smtp import SMTPFactory
from gateway.access.auth import UserDirectory
from gateway.access.pop3 import POP3Factory
from gateway.config import Settings
from gateway.deliver.maildir import MaildirDelivery
from gateway.queue.runner import QueueRunner
from gateway.queue.spool import Spool
from gateway.resolve.router import Router
from gateway.store.maildir import MaildirStore

log = Logger()


class RunnerService(service.Service):
    """Starts the queue runner with the reactor, stops its timers with it."""

    def __init__(self, runner: QueueRunner):
        self.runner = runner

    def startService(self) -> None:
        super().startService()
        self.runner.start()

    def stopService(self):
        self.runner.stop()
        return super().stopService()


def build(settings: Settings, reactor) -> service.MultiService:
    """The whole gateway for settings, as one twistd service."""
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls.ensure_certificate(settings.certificate, settings.private_key, settings.hostname)
    tls_options = tls.server_options(settings.certificate, settings.private_key)
    # Spool writes, Maildir deliveries and password hashes all run in threads.
    reactor.suggestThreadPoolSize(max(10, settings.queue.concurrency + 6))

    def run_blocking(f, *args):
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    users = UserDirectory(settings.users_file, reactor)
    router = Router(settings.domains, users)
    spool = Spool(settings.spool_dir, reactor)
    store = MaildirStore(settings.mail_dir)
    runner = QueueRunner(
        spool=spool, router=router, settings=settings.queue, reactor=reactor,
        targets={"local": MaildirDelivery(store, settings.hostname, run_blocking)},
        run_blocking=run_blocking)

    top = service.MultiService()
    RunnerService(runner).setServiceParent(top)
    for name, submission in (("smtp", False), ("submission", True)):
        if settings.listen[name]:
            factory = SMTPFactory(
                hostname=settings.hostname, domains=settings.domains, settings=settings.smtp,
                policy=RelayPolicy(router, settings.trusted_networks, submission=submission),
                spool=spool, listener=runner, users=users, tls_options=tls_options,
                plaintext_from_loopback=settings.plaintext_auth_from_loopback,
                reactor=reactor)
            strports.service(settings.listen[name], factory, reactor=reactor).setServiceParent(top)
    if settings.listen["pop3"]:
        factory = POP3Factory(
            hostname=settings.hostname, users=users, store=store, tls_options=tls_options,
            plaintext_from_loopback=settings.plaintext_auth_from_loopback,
            settings=settings.pop3, reactor=reactor)
        strports.service(settings.listen["pop3"], factory, reactor=reactor).setServiceParent(top)
    log.info("mailgateway for {domains} from {source}", domains=", ".join(settings.domains),
             source=settings.source)
    return top
