"""Test support for lowwater: brokers (Tansu, librdkafka's mock cluster) and Kafka helpers.

Nothing here imports pytest, so the demo and the benchmarks can use it too.
"""
