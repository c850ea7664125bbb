"""The fleet: several squadrons sharing triggers through NATS JetStream (docs/fleet.md).

Nothing here imports nats at import time except `link`, which the daemon loads only when a
fleet is configured: a squadron alone never loads the NATS client.
"""
