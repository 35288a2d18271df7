"""Pure decisions: a recipient address becomes a Route. No I/O of the network here."""
