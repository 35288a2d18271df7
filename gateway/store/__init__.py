"""The one owner of mailbox files: Maildirs under <state_dir>/mail/<domain>/<user>/."""
