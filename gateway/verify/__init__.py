"""Sender authentication on the way in: SPF, DKIM, DMARC and Authentication-Results.

A service of accept/: at the end of DATA on port 25, accept/smtp.py hands the
message and the session's facts to checker.InboundAuth, which runs the checks in
a thread pool of their own (DNS through dnspython, with timeouts) and returns a
Verdict: the header fields to add, spoofed Authentication-Results to drop, and
what to do (accept, accept into Junk, refuse). Uses only the kernel.
"""
