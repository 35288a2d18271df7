"""mailgateway: an organization's mail gateway in one Twisted process.

The folders are the stages of a message's flow (see ../shared/DESIGN.md):
accept -> queue -> resolve -> deliver -> store -> access.
"""
