"""Outbound message authentication: DKIM signing (RFC 6376, RFC 8463) of mail that leaves,
and ARC sealing (RFC 8617) of mail the gateway changes or passes on.

Not a stage of the flow but a service the last stages call: deliver/relay.py
signs each message as it reads it for sending, and the list exploder signs and
seals each list post once. Those stages never import this package; service.py
hands them plain callables (DkimSigner.sign_outbound or arc.RelaySealer, with
their outbound_wanted/wanted, so unsigned mail is never read whole; and
arc.PostSigner). keys.py owns the key files under <state_dir>/dkim/,
signer.py signs, arc.py seals, cli.py is `mailgateway dkim`.
"""
