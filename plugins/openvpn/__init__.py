"""OpenVPN for Ingot: a sans-I/O OpenVPN 2.6 peer, in layers.

- ``wire.py``: packet formats: opcodes, control packets (plaintext form, and the
  header split for tls-auth / tls-crypt), data packets (P_DATA_V1/V2), TCP
  framing, the key-method-2 messages, PUSH_REQUEST / PUSH_REPLY, peer info.
- ``reliable.py``: the control channel's reliability layer (packet ids, acks,
  retransmission with backoff, in-order delivery) and the data channel's
  replay window.
- ``crypto.py``: static keys, tls-auth / tls-crypt(-v2) wrapping, the data
  channel ciphers, key derivation.
- ``config.py``: OpenVPN configuration files, as stock OpenVPN 2.6 reads them.
"""
