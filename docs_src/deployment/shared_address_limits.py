from wsroom import Limits

limits = Limits(
    address_rate=1000.0, address_rate_burst=2000, handshake_rate=50.0, handshake_burst=200
)
