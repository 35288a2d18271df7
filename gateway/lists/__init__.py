"""Mailing lists: settings and members (store), list addresses, posting rules and
decoration, -request commands, bounce processing, the `mailgateway list` command."""
