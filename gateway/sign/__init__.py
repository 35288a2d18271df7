"""Outbound message authentication: DKIM signing (RFC 6376, RFC 8463) of mail that leaves.

Not a stage of the flow but a service the last stages call: deliver/relay.py
signs each message as it reads it for sending, and the list exploder can sign
list posts. Those stages never import this package; service.py hands them
DkimSigner.sign_outbound as a plain callable. keys.py owns the key files
under <state_dir>/dkim/, signer.py signs, cli.py is `mailgateway dkim`.
"""
