"""The pure heart of lowwater: offset tracking, leases, flow control and policy.

Nothing here does I/O, starts threads or reads a clock: time arrives as a
``now`` argument (monotonic seconds), and Kafka records arrive as opaque
payloads. The runtime owns one :class:`~coordinator.core.ledger.Ledger` and
drives it from a single thread.
"""
