"""The soak's fixed parameters."""

TARGET = "soak"
ACCESS_TTL = 2  # seconds: tokend serves each token for 1 s (exp - iat - 1)
DEFAULT_SLACK = 0.1
DEFAULT_CONSUMERS = "poll:3,raw:1,min_ttl:2,invalidate:1"
