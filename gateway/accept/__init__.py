"""Accepting mail: the ESMTP server, its relay policy and the Received header."""
