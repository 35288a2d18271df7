"""IMAP4rev1 access to the Maildir store: server.py (the protocol), account.py,
mailbox.py, fetch.py, search.py (esearch.py, sort.py, thread.py), message.py (MIME
sections), wire.py (syntax)."""
