"""Deployment: which node holds which data partition, asked once before the first round."""

from __future__ import annotations

import time

from flwr.app import Message, MessageType, RecordDict

from fedquant.federation import protocol as P


class PartitionsMissing(RuntimeError):
    """The federation's nodes do not hold every client partition exactly once."""


def discover_partitions(grid, num_partitions: int, timeout_s: float = 120.0) -> dict[int, int]:
    """``{partition: node id}`` from a QUERY to every node, once ``num_partitions`` nodes are
    connected (each SuperNode's ``--node-config "partition-id=K num-partitions=N"``). Raises
    :class:`PartitionsMissing` naming what is missing, duplicated or wrong."""
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < num_partitions:
        if time.monotonic() > deadline:
            raise PartitionsMissing(f"{len(nodes)} of num_clients={num_partitions} nodes connected within "
                                    f"{timeout_s:g} s: start one SuperNode per client partition")
        time.sleep(0.5)
    replies = grid.send_and_receive([Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY)
                                     for n in nodes])
    node_of: dict[int, int] = {}
    for reply in replies:
        if reply.has_error():
            raise PartitionsMissing(f"node {reply.metadata.src_node_id} did not say its partition: {reply.error.reason}")
        partition = int(reply.content.metric_records[P.METRICS][P.PARTITION])
        if partition in node_of:
            raise PartitionsMissing(f"partition-id={partition} is held by nodes {node_of[partition]} and "
                                    f"{reply.metadata.src_node_id}: give every SuperNode its own partition-id")
        node_of[partition] = reply.metadata.src_node_id
    missing = sorted(set(range(num_partitions)) - set(node_of))
    if missing:
        raise PartitionsMissing(f"no node holds partitions {missing} of num_clients={num_partitions}")
    return node_of
