"""The queue runner and the delivery lane in a process of their own ([queue] runner_process).

Why: under one GIL the gateway uses one core while Postfix uses every core;
by the profile (bench/RESULTS.md, 2026-11-26) accepting and delivering cost
about the same CPU, so on a 2-core machine taking the delivery lane out of
the listeners' process nearly doubles what either can do.

Who does what:
- the parent (twistd) keeps every listener, per-client limits, the AUTH
  guard, the spool writes behind each 250, and the IMAP/POP3 stores (the only
  writer of a folder's index); it starts the child (parent.py) and restarts
  it when it dies;
- the child (child.py, `python -m gateway.runnerproc`) runs the queue runner
  and every delivery target (Maildir, programs, mbox, relay, lists), the
  bouncer and the submitter, exactly as built for one process (service.py).

The pipe between them (channel.py) carries netstrings: queue IDs to the
child, and back the Maildirs it delivered into (the parent's open folders
sync at once, for IDLE), the runner's counts (metrics gauges) and the
child's log events (one log). The spool stays the truth: a queue ID lost on
the pipe (a child that died) is found by the next child's start-up scan.
"""
