"""Mail clients' side: authentication and the POP3 (and later IMAP4) servers."""
