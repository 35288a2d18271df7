"""SMTP accept workers ([smtp] accept_workers): processes that take mail beside the gateway.

Why: under one GIL all SMTP accepting ran on the gateway's one reactor thread
while Postfix spreads smtpd, cleanup and qmgr over every core (bench/RESULTS.md,
2026-11-27: our CPU per message within ~11% of Postfix+Dovecot's, the rate
0.75x). N workers accept on N cores.

Who does what:
- the gateway (parent.py) binds every SMTP listening socket before it drops
  privileges (listen.smtp, listen.submission, and proxied.smtp/.submission,
  where the TLS front hands over port 465) and never accepts on them
  (listeners.HeldListener); it starts N workers that inherit them, restarts a
  worker that dies (the runnerproc machinery: one ChildProcess, one channel),
  keeps the one queue runner (or the runner process), the AUTH guessing
  budget shared with IMAP and POP3, and the one log;
- each worker (worker.py, `python -m gateway.acceptproc`) accepts on the
  inherited sockets (the kernel hands each connection to one of them: an idle
  worker wakes first), runs the same SMTP sessions (gateway/accept), writes the
  spool entry durably before its 250 as one process does, and tells the
  gateway each new queue ID (Q frame), which tells its runner.

Limits across workers:
- SMTP AUTH is checked by the gateway (A/R frames): one budget of failures per
  client and per account, for SMTP, IMAP and POP3 alike, as in one process;
- [smtp] max_connections_per_client: each worker counts its own connections
  and tells the gateway (N frames), which adds them up per listener and client
  and tells every worker when a client is at the limit (F frames): its next
  connection is refused with the same 421, whichever worker takes it. The
  word travels in milliseconds, so a burst of connections on several workers
  at that moment may pass the limit by a few, never by more than one
  worker's own limit (each still counts its own against the full limit);
- per-session limits (size, recipients, bad commands, timeouts) are the
  session's own, so they hold unchanged.
What a dying worker never told of (a 250 given, the Q frame not yet sent) is
in the spool: the gateway asks its runner to look there (QueueRunner.pick_up).
"""
