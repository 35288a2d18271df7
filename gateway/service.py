"""The composition root: the one place that wires concrete classes of several stages.

tap.py hands it the Settings and the reactor; it returns a twistd service
whose children are the listeners (endpoint strings from [listen]) and the
queue runner. Start-up makes the state directories and, when no certificate
is configured, a self-signed one.
"""

from __future__ import annotations

import dataclasses

import dns.exception
from twisted.application import service
from twisted.internet import task, threads
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from gateway import aliasfile, metrics_web, privileges, proxyproto, runlock, tls, tlsfront
from gateway.accept.policy import RelayPolicy
from gateway.accept.smtp import SMTPFactory
from gateway.acceptproc import parent as acceptproc_parent
from gateway.acceptproc.worker import RemoteDirectory, SharedCounter
from gateway.access.auth import UserDirectory
from gateway.access.authcache import AuthCache
from gateway.access.authguard import GuardedDirectory
from gateway.access.imap.server import IMAPFactory
from gateway.access.pop3 import POP3Factory
from gateway.budget import ByteBudget
from gateway.config import Settings
from gateway.deliver.maildir import MaildirDelivery
from gateway.deliver.mbox import MboxDelivery
from gateway.deliver.mx import MXResolver, make_resolver
from gateway.deliver.program import ProgramDelivery
from gateway.deliver.relay import RelayTarget
from gateway.deliver.tlspolicy import ClientTLS
from gateway.durable import BlockingBatcher, in_thread
from gateway.errors import ConfigError
from gateway.listeners import AdoptedListener, HeldListener, Listener
from gateway.lists import web as lists_web
from gateway.lists.archive import ArchiveFolders
from gateway.lists.directory import ListDirectory
from gateway.lists.exploder import ListTarget
from gateway.lists.store import ListStore
from gateway.metrics import REGISTRY
from gateway.queue.bounce import Bouncer
from gateway.queue.runner import QueueRunner
from gateway.queue.spool import Spool
from gateway.queue.submit import Submitter
from gateway.resolve.router import Router
from gateway.resolve.transport import TransportMap
from gateway.runnerproc import parent as runnerproc_parent
from gateway.sign.arc import ArcSealer, PostSigner, RelaySealer
from gateway.sign.keys import KeyRing
from gateway.sign.signer import DkimSigner
from gateway.store.maildir import MaildirStore
from gateway.store.quota import Limits
from gateway.verify.checker import InboundAuth
from gateway.verify.dmarc import published_policy
from gateway.verify.dnsquery import DnsQuery, TempDNSError
from gateway.verify.orgdomain import OrgDomains

log = Logger()


class RunnerService(service.Service):
    """Starts the queue runner with the reactor, stops its timers with it."""

    def __init__(self, runner: QueueRunner):
        self.runner = runner
        self.started = None

    def startService(self) -> None:
        super().startService()
        # Fires once the spool's entries are scheduled (the runner process's channel
        # waits for it before handing queue IDs over).
        self.started = self.runner.start()
        self.started.addErrback(lambda f: log.failure("queue runner could not start", f))

    def stopService(self):
        self.runner.stop()
        return super().stopService()


class ProgramService(service.Service):
    """Starts the program spawner while the gateway is still root (privilegedStartService
    runs before [server] user's drop and before twistd --uid's): only root can give
    programs [program] user (deliver/spawner.py)."""

    def __init__(self, program: ProgramDelivery):
        self.program = program

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.program.start()


# Work a folder leaves for after its answer (Folder.write_rows) starts this many
# seconds later, so the answer and the client's next command go first.
AFTER_ANSWER = 1.0


def _after_answer(reactor):
    """The store's background hook: f in the reactor's thread pool, AFTER_ANSWER later
    (called from a pool thread: the timer is set on the reactor thread)."""
    def later(f):
        reactor.callFromThread(reactor.callLater, AFTER_ANSWER, reactor.callInThread, f)
    return later


class StoreService(service.Service):
    """At shutdown, after the thread pools (it starts first, so stops last): each open
    folder's packed listing saved if its rows changed, so a restart reads one record
    per folder instead of every row (store/listing.py)."""

    def __init__(self, *stores: MaildirStore):
        self.stores = stores

    def stopService(self):
        for store in self.stores:
            try:
                store.keep_listings()
            except Exception:  # a cache: the next start reads the rows instead
                log.failure("saving folder listings at shutdown")
        return super().stopService()


class PoolsService(service.Service):
    """Starts and stops thread pools of their own kind ([threads]) with the gateway."""

    def __init__(self, *pools: ThreadPool):
        self.pools = pools

    def startService(self) -> None:
        super().startService()
        for pool in self.pools:
            pool.start()

    def stopService(self):
        for pool in self.pools:
            pool.stop()
        return super().stopService()


@dataclasses.dataclass
class _Core:
    """What both roles share: the spool, routing, the stores and their write lanes."""
    top: service.MultiService
    accept_blocking: BlockingBatcher
    run_blocking: BlockingBatcher
    router: Router
    spool: Spool
    store: MaildirStore
    list_store: ListStore
    archive: MaildirStore
    orgs: OrgDomains
    users: GuardedDirectory
    auth_pool: ThreadPool


def build(settings: Settings, reactor, serving=None) -> service.MultiService:
    """The whole gateway for settings, as one twistd service: every listener, and the
    queue runner with its deliveries here or, with [queue] runner_process, in a process
    of its own (gateway/runnerproc) that this one starts (as serving, once root)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # One gateway per state_dir; sockets and locks a killed one left are cleared.
    run_lock = runlock.claim(settings.state_dir)
    core = _core(settings, reactor)
    core.top.run_lock = run_lock  # held (open) as long as the gateway runs
    # The spool's repair after a crash, here and now, before any listener: a runner
    # starting while entries are already being written (its start is a trip in the
    # run lane, late under load) took a half-written one for a crash's leftover:
    # it deleted its tmp/ file, or died on one renamed meanwhile ("queue runner
    # could not start", seen in the suite at load 8). With a runner process, under
    # the runner's lock: one left by a gateway killed a moment ago finishes first.
    if settings.queue.runner_process:
        with runlock.claim_runner(settings.state_dir, wait=60.0):
            core.spool.recover()
        # Files the child delivered are indexed in the run lane, idle here: its trips'
        # syncs make the index commits durable (gateway/durable.py).
        runner = runnerproc_parent.RunnerProcess(
            reactor, runnerproc_parent.child_argv(
                runnerproc_parent.config_path(settings.source),
                *((child.uid, child.gid) if (child := privileges.child_identity(serving))
                  else ())),
            runnerproc_parent.Dispatch(
                runnerproc_parent.folder_finder(core.store, core.archive),
                lambda folder, names: core.run_blocking(folder.arrived_elsewhere, names),
                runnerproc_parent.publish_event, clock=reactor))
        runner.setServiceParent(core.top)
        reloads = [runner.reload]
    else:
        core.top.runner_lock = runlock.claim_runner(settings.state_dir)
        core.spool.recover()
        runner = _delivery(settings, reactor, core).runner
        reloads = []
    _, tls_options, workers = _access(settings, reactor, core, runner, serving)
    if workers is not None:
        reloads.append(workers.reload)
    # After the fronts: its SIGHUP handler chains to theirs.
    aliasfile.AliasReloader(settings, core.router, reactor,
                            forward_sighup=_each(reloads) if reloads else None
                            ).setServiceParent(core.top)
    _metrics(settings, core.spool, runner, reactor, core.top)
    _web(settings, core.list_store, tls_options, reactor, core.top)
    log.info("mailgateway for {domains} from {source}", domains=", ".join(settings.domains),
             source=settings.source)
    return core.top


def build_runner(settings: Settings, reactor, link, lock_wait: float = 60.0
                 ) -> service.MultiService:
    """The runner process (gateway/runnerproc/child.py): the queue runner and every
    delivery, built as in one process; link is its channel to the listeners' process
    (new queue IDs in; the Maildirs delivered into, counts and log events out)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # A runner started again while the one before still finishes waits for it.
    run_lock = runlock.claim_runner(settings.state_dir, wait=lock_wait)
    core = _core(settings, reactor, delivered=link.delivered)
    core.top.run_lock = run_lock
    lane = _delivery(settings, reactor, core)
    reloader = aliasfile.AliasReloader(settings, core.router, reactor, install_sighup=False)
    reloader.setServiceParent(core.top)
    link.reload = lambda: reloader.reload("SIGHUP")
    link.check_aliases = reloader.check
    _Started(lane, link).setServiceParent(core.top)
    log.info("runner process for {domains} from {source}",
             domains=", ".join(settings.domains), source=settings.source)
    return core.top


def _each(calls):
    """One call that makes each of calls (SIGHUP to the runner process and workers)."""
    def call() -> None:
        for c in calls:
            c()
    return call


def build_worker(settings: Settings, reactor, link, sockets: dict[str, int]
                 ) -> service.MultiService:
    """An SMTP accept worker (gateway/acceptproc/worker.py): the SMTP sessions of one
    process, on the inherited listening sockets {setting: fd} of the gateway; link
    is its channel (queue IDs, AUTH checks and connection counts out; alias
    reloads and clients at their connection limit in)."""
    core = _core(settings, reactor)
    users = RemoteDirectory(core.users.users, link)
    tls_options = _tls_options(settings)
    authcheck = _inbound_auth(settings, reactor, core.top, core.orgs)
    factories = {}
    for name in ("smtp", "submission"):
        factory = factories[name] = _smtp_factory(settings, name, core, link, users,
                                                  tls_options, authcheck, reactor=reactor)
        # One count per listener, as in one process: the gateway adds up the workers'.
        factory.connections = SharedCounter(settings.smtp.max_connections_per_client, link,
                                            name)
    for setting, fd in sockets.items():
        kind, _, name = setting.partition(".")
        factory = factories[name]
        if kind == "proxied":
            factory = proxyproto.ProxiedFactory(factory, settings.proxied.trusted_sources,
                                                settings.proxied.header_timeout, reactor)
        AdoptedListener(setting, fd, factory, reactor).setServiceParent(core.top)
    reloader = aliasfile.AliasReloader(settings, core.router, reactor, install_sighup=False)
    reloader.setServiceParent(core.top)
    link.reload = lambda: reloader.reload("SIGHUP")
    log.info("accept worker for {domains} from {source}",
             domains=", ".join(settings.domains), source=settings.source)
    return core.top


class _Started(service.Service):
    """Hands the runner to the channel once its start-up scan has scheduled the spool."""

    def __init__(self, lane: RunnerService, link):
        self.lane = lane
        self.link = link

    def startService(self) -> None:
        super().startService()  # after the lane's: its start-up scan has begun
        self.lane.started.addCallback(lambda _: self.link.started(self.lane.runner))


def _core(settings: Settings, reactor, delivered=None) -> _Core:
    """The parts both processes build: write lanes, routing, spool and stores."""
    # Spool writes and Maildir deliveries run in the reactor's threads.
    reactor.suggestThreadPoolSize(max(10, settings.queue.concurrency + 6))
    # Disk work of the queue goes to the pool in batches (group commit, durable.py),
    # in two lanes of one thread each: spool writes for SMTP's 250s, and the
    # runner's work. More threads only fought over the GIL (bench/RESULTS.md).
    # A big file in either lane goes to the disk as it is written ([queue]
    # writeback_window), so that a trip's sync never waits for tens of MB of it.
    window = settings.queue.writeback_window
    accept_blocking = BlockingBatcher(reactor, max_trips=1, sync=settings.queue.sync,
                                      writeback_window=window)
    run_blocking = BlockingBatcher(reactor, max_trips=1, sync=settings.queue.sync,
                                   writeback_window=window)
    # Password hashes have a pool of their own, so guessing passwords never delays
    # a 250 (issue 11).
    auth_pool = ThreadPool(minthreads=0, maxthreads=settings.threads.auth, name="auth")
    # One guessing budget for SMTP AUTH, POP3 and IMAP (access/authguard.py).
    g = settings.auth_guard
    cache = AuthCache(g.cache_ttl, g.cache_size, reactor.seconds)
    users = GuardedDirectory(UserDirectory(settings.users_file, reactor, auth_pool, cache),
                             g, reactor)
    table, faults = aliasfile.load_table(settings)
    if faults:
        raise ConfigError([(settings.source, "aliases.file", fault) for fault in faults])
    list_store = ListStore(settings.state_dir / "lists")
    a = settings.aliases
    router = Router(settings.domains, users, aliases=table, delimiter=a.recipient_delimiter,
                    max_depth=a.max_depth, shell=a.shell, reply=a.reply,
                    lists=ListDirectory(list_store))
    spool = Spool(settings.spool_dir, reactor, accept_blocking, writeback_window=window,
                  spare_files=settings.queue.spare_files)
    # IMAP sessions are told of deliveries (made in pool threads) on the reactor thread.
    store = MaildirStore(settings.mail_dir, announce=reactor.callFromThread,
                         background=_after_answer(reactor),
                         limits=Limits(settings.quotas_file, settings.mailbox_quota,
                                       settings.mailbox_quota_grace),
                         vanished_limit=settings.mailbox_vanished_uids,
                         read_ahead=settings.mailbox_read_ahead, delivered=delivered)
    # One archive store for the exploder that writes it and the IMAP readers (shared
    # folders), so a post filed in a pool thread wakes the sessions that have it open.
    archive = MaildirStore(settings.state_dir / "lists" / "archive",
                           announce=reactor.callFromThread, delivered=delivered)
    top = service.MultiService()
    StoreService(store, archive).setServiceParent(top)
    PoolsService(auth_pool).setServiceParent(top)
    # One Public Suffix List for DMARC, on the way in and for list posts.
    orgs = OrgDomains(settings.inbound_auth.public_suffix_list)
    return _Core(top=top, accept_blocking=accept_blocking, run_blocking=run_blocking,
                 router=router, spool=spool, store=store, list_store=list_store,
                 archive=archive, orgs=orgs, users=users, auth_pool=auth_pool)


def _delivery(settings: Settings, reactor, core: _Core) -> RunnerService:
    """The queue runner and every delivery target, bouncer and submitter (one process's
    or the runner process's); its services join core.top. The spool was repaired
    before (build): the runner only lists it."""
    top, spool, run_blocking = core.top, core.spool, core.run_blocking
    bouncer = Bouncer(spool=spool, hostname=settings.hostname, clock=reactor,
                      size_limit=settings.queue.bounce_size_limit,
                      max_age=settings.queue.max_age, run_blocking=run_blocking)
    # The runner is the submitter's listener, and the submitter serves the runner's
    # targets (a program's reply): one is told of the other once both exist.
    submitter = Submitter(spool, None, settings.hostname, reactor)
    try:
        program = ProgramDelivery(settings.program, settings.hostname, reactor,
                                  submit=submitter)
    except ValueError as e:
        key, _, reason = str(e).partition(": ")
        raise ConfigError([(settings.source, key, reason)]) from None
    # DKIM signing and ARC sealing of mail that leaves (gateway/sign/): relayed mail in
    # the relay's threads, list posts once each in the exploder's (PostSigner).
    keyring = KeyRing(settings.dkim_dir, settings.dkim.check_interval)
    dkim = DkimSigner(keyring, enabled=settings.dkim.sign,
                      trusted_networks=settings.trusted_networks)
    arc = settings.arc
    sealer = ArcSealer(keyring, settings.authserv_id,
                       dnsfunc=_dkim_dnsfunc(settings))
    if arc.seal_relayed:
        sealer_ = RelaySealer(dkim, sealer, arc.domain or settings.domains[0])
        sign, sign_wanted = sealer_, sealer_.wanted
    else:
        sign, sign_wanted = dkim.sign_outbound, dkim.outbound_wanted
    # Whole-message work after the 250 (signing, list posts) shares one budget.
    memory = ByteBudget(settings.queue.whole_message_memory)
    relay, run_dns = _relay(settings, reactor, run_blocking, top, sign=sign,
                            sign_wanted=sign_wanted, memory=memory)
    lists = ListTarget(core.list_store, submitter, reactor, in_thread(reactor),
                       archive=core.archive,
                       dmarc_policy=_dmarc_policy(settings, run_dns, core.orgs), memory=memory,
                       sign_post=PostSigner(dkim if settings.dkim.sign else None,
                                            sealer if arc.seal_lists else None))
    targets = {"local": MaildirDelivery(core.store, settings.hostname, run_blocking,
                                        max_batch=settings.queue.local_batch),
               "remote": relay,
               "program": program,
               "file": MboxDelivery(settings.mbox, reactor, in_thread(reactor)),
               "list": lists}
    # Removals of finished entries: nothing to sync, so no place in the run lane's
    # trips, but gathered as they are (one thread hop for all that arrive while one
    # runs, not one each: a hop per message was a twentieth of the runner's CPU).
    unsynced = BlockingBatcher(reactor, max_trips=2, sync="file")
    runner = QueueRunner(
        spool=spool, router=core.router, settings=settings.queue, reactor=reactor,
        targets=targets, run_blocking=run_blocking, run_unsynced=unsynced,
        bouncer=bouncer, control_root=settings.spool_dir, recover=False)
    submitter.listener = runner
    ProgramService(program).setServiceParent(top)
    lane = RunnerService(runner)
    lane.setServiceParent(top)
    OutboxService(lists, reactor, settings.queue.control_interval).setServiceParent(top)
    return lane


def _tls_options(settings: Settings):
    """STARTTLS/STLS: the [tls] files, read again when they change (ACME renewals);
    made once per process (the listeners' process only)."""
    return tls.ReloadingServerTLS(settings.certificate, settings.private_key)


def _smtp_factory(settings: Settings, name: str, core: _Core, runner, users, tls_options,
                  authcheck, reactor=None) -> SMTPFactory:
    """The SMTP server of listener name ("smtp" or "submission"), in the gateway or in an
    accept worker."""
    submission = name == "submission"
    return SMTPFactory(
        hostname=settings.hostname, domains=settings.domains, settings=settings.smtp,
        policy=RelayPolicy(core.router, settings.trusted_networks,
                           submission=submission,
                           sender_login=settings.smtp.sender_login_match,
                           quota=core.store),
        spool=core.spool, listener=runner, users=users, tls_options=tls_options,
        plaintext_from_loopback=settings.plaintext_auth_from_loopback,
        reactor=reactor, authcheck=None if submission else authcheck)


def _access(settings: Settings, reactor, core: _Core, runner, serving=None):
    """Every listener (SMTP, submission, POP3, IMAP, the TLS fronts) on core's spool and
    stores; runner: the IQueueListener told of each entry spooled. Returns the
    mailbox pool (folder work, and syncs the runner process asks for), the
    STARTTLS options (also the web's) and the accept workers (None without:
    [smtp] accept_workers = 0), which take the SMTP listeners' sockets."""
    top, store = core.top, core.store
    tls.ensure_certificate(settings.certificate, settings.private_key, settings.hostname)
    tls_options = _tls_options(settings)
    # Mailbox work (POP3, IMAP SEARCH ...) has pools of its own, so searching never
    # delays a 250 (issue 11).
    mailbox_pool = ThreadPool(minthreads=0, maxthreads=settings.threads.mailbox,
                              name="mailbox")
    search_pool = ThreadPool(minthreads=0, maxthreads=settings.threads.search, name="search")
    PoolsService(mailbox_pool, search_pool).setServiceParent(top)
    users = core.users
    authcheck = _inbound_auth(settings, reactor, top, core.orgs)
    # Each server's factory, also for its proxied listener behind tlsfront (_fronts);
    # None: the accept workers serve it, on sockets bound here (held).
    factories: dict[str, object] = {}
    held: list[HeldListener] = []
    workers = settings.smtp.accept_workers
    for name in ("smtp", "submission"):
        if settings.listen[name] or name in settings.proxied.listen:
            factories[name] = None if workers else _smtp_factory(
                settings, name, core, runner, users, tls_options, authcheck, reactor=reactor)
        if settings.listen[name]:
            _listen(f"listen.{name}", settings.listen[name], factories[name], reactor, top,
                    held)
    if settings.listen["pop3"] or "pop3" in settings.proxied.listen:
        factory = factories["pop3"] = POP3Factory(
            hostname=settings.hostname, users=users, store=store, tls_options=tls_options,
            plaintext_from_loopback=settings.plaintext_auth_from_loopback,
            settings=settings.pop3, reactor=reactor,
            run_blocking=in_thread(reactor, mailbox_pool))
    if settings.listen["pop3"]:
        _listen("listen.pop3", settings.listen["pop3"], factory, reactor, top)
    if settings.listen["imap"] or "imap" in settings.proxied.listen:
        factory = factories["imap"] = _imap(settings, reactor, users, store, tls_options,
                                            mailbox_pool, search_pool,
                                            ArchiveFolders(core.list_store, core.archive))
    if settings.listen["imap"]:
        _listen("listen.imap", settings.listen["imap"], factory, reactor, top)
    _fronts(settings, factories, reactor, top, held)
    accept = None
    if held:
        # After the held listeners: they are bound when the workers start.
        child = privileges.child_identity(serving)
        accept = acceptproc_parent.AcceptWorkers(
            reactor, workers, held, runnerproc_parent.config_path(settings.source),
            runner, users, runnerproc_parent.publish_event,
            settings.smtp.max_connections_per_client,
            uid=child.uid if child else None, gid=child.gid if child else None)
        accept.setServiceParent(top)
    return mailbox_pool, tls_options, accept


def _listen(setting: str, endpoint: str, factory, reactor, parent, held=None) -> None:
    """A listener that names its setting when it cannot listen (gateway/listeners.py);
    factory None: bound here for the accept workers (added to held)."""
    if factory is None:
        listener = HeldListener(setting, endpoint, reactor)
        held.append(listener)
    else:
        listener = Listener(setting, endpoint, factory, reactor)
    listener.setServiceParent(parent)


def _metrics(settings: Settings, spool: Spool, runner: QueueRunner, reactor, parent) -> None:
    """[metrics] listen: /metrics and /status (gateway/metrics_web.py), off by default."""
    REGISTRY.gauge("mailgateway_queue_entries", lambda: len(spool.queue_ids()))
    for state in ("active", "scheduled"):
        REGISTRY.gauge(f"mailgateway_queue_entries_{state}",
                       lambda state=state: runner.counts()[state])
    if settings.metrics_listen:
        listeners = {**{f"listen.{k}": v for k, v in settings.listen.items() if v},
                     **{f"tlsfront.{f.name}": f.accept for f in settings.tlsfront}}
        _listen("metrics.listen", settings.metrics_listen,
                metrics_web.site(REGISTRY, listeners), reactor, parent)


def _web(settings: Settings, list_store: ListStore, tls_options, reactor, parent) -> None:
    """[web] listen: RFC 8058 one-click unsubscribe (gateway/lists/web.py), off by default;
    HTTPS with the STARTTLS certificate (reloaded alike) unless [web] tls = false."""
    web = settings.web
    if not web.listen:
        return
    factory = lists_web.site(list_store, in_thread(reactor), max_body=web.max_request_size,
                             timeout=web.idle_timeout)
    if web.tls:
        factory = TLSMemoryBIOFactory(tls_options, False, factory)
    _listen("web.listen", web.listen, factory, reactor, parent)


# --- IMAP4 ---------------------------------------------------------------------------


def _imap(settings: Settings, reactor, users, store, tls_options, pool, search_pool,
          shared) -> IMAPFactory:
    """The IMAP server's factory; its folder work runs in the mailbox thread pool, its
    searches in the search pool. shared: the list archives each user may read, as
    the shared namespace "Lists."."""
    return IMAPFactory(
        hostname=settings.hostname, users=users, store=store, tls_options=tls_options,
        plaintext_from_loopback=settings.plaintext_auth_from_loopback,
        settings=settings.imap, reactor=reactor, run_blocking=in_thread(reactor, pool),
        run_search=in_thread(reactor, search_pool), shared=shared)


# --- outbound relay ------------------------------------------------------------------


class RelayService(service.Service):
    """Runs the DNS thread pool, and QUITs cached relay connections at shutdown."""

    def __init__(self, relay: RelayTarget, dns_pool: ThreadPool):
        self.relay = relay
        self.dns_pool = dns_pool

    def startService(self) -> None:
        super().startService()
        self.dns_pool.start()

    def stopService(self):
        self.relay.close()
        self.dns_pool.stop()
        return super().stopService()


def _relay(settings: Settings, reactor, run_blocking, parent, sign=None, sign_wanted=None,
           memory=None):
    """The "remote" target: transport map -> MX (dnspython, own threads) -> SMTP client;
    and the DNS threads' runner, for the other lookups (DMARC)."""
    relay = settings.relay
    # DNS lookups get their own threads: a slow name server must not hold up
    # spool writes and Maildir deliveries in the reactor's pool.
    dns_pool = ThreadPool(minthreads=0, maxthreads=max(4, relay.destination_concurrency),
                          name="dns")

    def run_dns(f, *args):
        return threads.deferToThreadPool(reactor, dns_pool, f, *args)

    helo = relay.helo_name or settings.hostname
    resolver = MXResolver(
        resolver=make_resolver(relay.nameservers, relay.dns_port, relay.dns_timeout),
        run_blocking=run_dns, local_names={settings.hostname, helo},
        max_addresses=relay.max_addresses)
    password = ""
    if relay.smarthost_password_file:
        with open(relay.smarthost_password_file, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    target = RelayTarget(settings=relay, helo=helo, transport=TransportMap(relay), mx=resolver,
                         tls_options=ClientTLS(relay.tls_ca_file), reactor=reactor,
                         run_blocking=run_blocking, password=password, sign=sign,
                         sign_wanted=sign_wanted, memory=memory,
                         read_blocking=in_thread(reactor),
                         measure_blocking=BlockingBatcher(reactor, max_trips=2, sync="file"))
    RelayService(target, dns_pool).setServiceParent(parent)
    return target, run_dns


def _inbound_auth(settings: Settings, reactor, parent, orgs: OrgDomains
                  ) -> InboundAuth | None:
    """SPF, DKIM and DMARC on port 25 (gateway/verify/), in a pool of their own: checks
    wait on other people's name servers, and must never delay spool writes or logins."""
    ia = settings.inbound_auth
    if not ia.check:
        return None
    pool = ThreadPool(minthreads=0, maxthreads=ia.threads, name="verify")
    PoolsService(pool).setServiceParent(parent)
    relay = settings.relay
    resolver = make_resolver(relay.nameservers, relay.dns_port,
                             min(relay.dns_timeout, ia.timeout))
    return InboundAuth(ia, settings.authserv_id, resolver, in_thread(reactor, pool), reactor,
                       orgs)


def _txt_blocking(settings: Settings):
    """name -> its TXT strings ([] when none or when DNS fails), by the [relay] name
    servers. Blocking: in a thread."""
    relay = settings.relay
    resolver = make_resolver(relay.nameservers, relay.dns_port, relay.dns_timeout)

    def lookup(name: str) -> list[str]:
        try:
            answer = resolver.resolve(name, "TXT")
        except dns.exception.DNSException:
            return []
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    return lookup


def _dmarc_policy(settings: Settings, run_dns, orgs: OrgDomains):
    """domain -> Deferred of the DMARC policy that applies to its mail, found as the
    inbound checks find it (verify/dmarc.published_policy: org domain, sp=, np=);
    "none" when DNS fails: a list post is then treated as from a lax domain, never
    held up. For the list exploder, which may not import verify/ itself."""
    relay = settings.relay
    resolver = make_resolver(relay.nameservers, relay.dns_port, relay.dns_timeout)

    def policy(domain: str) -> str:
        try:
            return published_policy(DnsQuery(resolver, relay.dns_timeout), domain, orgs)
        except TempDNSError:
            return "none"

    return lambda domain: run_dns(policy, domain)


def _dkim_dnsfunc(settings: Settings):
    """dkimpy's dnsfunc (name bytes -> the first TXT record, or None) on the [relay] name
    servers: the key records of an incoming ARC chain (sign/arc.py, pool threads)."""
    lookup = _txt_blocking(settings)

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        found = lookup(text)
        return found[0].encode("utf-8") if found else None

    return dnsfunc


class OutboxService(service.Service):
    """Explodes approved list posts (gateway/lists/outbox.py) at start, then every
    interval seconds ([queue] control_interval, as for `mailgateway queue` requests)."""

    def __init__(self, lists: ListTarget, reactor, interval: float):
        self.lists = lists
        self.reactor = reactor
        self.interval = interval
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self._poll)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def _poll(self):
        return self.lists.poll_outbox().addErrback(
            lambda f: log.failure("lists: approved posts", f))

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()


# --- the TLS front and the proxied listeners behind it ---------------------------------


def _fronts(settings: Settings, factories: dict, reactor, parent, held=None) -> None:
    """[proxied] listeners (a PROXY header first, gateway/proxyproto.py) around the servers'
    own factories, and the [[tlsfront]] fronts (gateway/tlsfront) that connect to them."""
    proxied = settings.proxied
    if any(e.startswith("unix:") for e in proxied.listen.values()):
        # The socket's mode guards who may claim a client's address; the directory too.
        run_dir = settings.state_dir / "run"
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        run_dir.chmod(0o700)
    for name, endpoint in proxied.listen.items():
        if name not in factories:
            log.info("proxied {name} listener {endpoint} not started: no {name} server",
                     name=name, endpoint=endpoint)
            continue
        wrapper = None if factories[name] is None else proxyproto.ProxiedFactory(
            factories[name], proxied.trusted_sources, proxied.header_timeout, reactor)
        _listen(f"proxied.{name}", endpoint, wrapper, reactor, parent, held)
    fronts = []
    for front in settings.tlsfront:
        if front.backend and front.backend not in factories:
            log.info("tlsfront {front} not started: no {backend} server", front=front.name,
                     backend=front.backend)
            continue
        fronts.append(front)
    if fronts:
        tlsfront.FrontsService(fronts, reactor, install_sighup=True).setServiceParent(parent)
