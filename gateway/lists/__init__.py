"""Mailing lists, the parts the list delivery target calls: store.py (settings,
members, held posts, tokens, bounce scores), addresses.py (dev-request@ & co,
VERP), posting.py (decide, decorate), requests.py (commands by mail),
bounces.py, notices.py (mail the list sends), outbox.py (approved posts for the
gateway), cli.py (`mailgateway list`)."""
