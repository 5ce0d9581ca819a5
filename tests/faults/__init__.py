"""The fault-injection suite: traffic, faults, and a checker that nothing was lost.

A run produces records with unique sequence ids at a steady rate while SDK
worker processes journal every id they process (durably, before settling).
Faults are injected on a schedule; a sampler reads the group's committed
offsets all along. The checker then compares what was produced, processed and
committed. ``python -m tests.faults`` runs the scenarios and prints the table.
"""
