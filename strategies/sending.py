"""What the server sends each round: Flower's one training record made into one Message per
sampled client (its partition, bit-widths, width, seed, the round's learning rate), dealt out
over the connected nodes, or in deployment sent to the node holding the client's data."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedquant.federation import protocol as P
from fedquant.federation.attacks import attack_record
from fedquant.federation.freezing import FreezeState
from fedquant.federation.plan import TrainingPlan

from .flower_compat import flower_mismatch
from .links import Links, downlink, link_config, record_bytes


@dataclass
class RoundInFlight:
    """What :meth:`QuantAwareMixin.configure_train` sent for the round now training."""

    server_round: int  # fedquant's round (Flower's round + round_offset)
    arrays: ArrayRecord
    config: ConfigRecord
    grid: object | None  # Flower's Grid; None when aggregate_train is called without one
    node_clients: dict[int, list[int]] = field(default_factory=dict)  # node id -> the clients sent to it
    downlink_bytes: dict[int, int] = field(default_factory=dict)  # client -> the payload it was sent
    uplink_bytes: dict[int, int] = field(default_factory=dict)  # client -> the payload of its reply, as received
    received: dict | None = None  # the model the clients decode from the broadcast (compressed links)


def shared_record(flower_messages: list[Message], strategy_name: str) -> RecordDict:
    """The one record Flower's ``configure_train`` addresses to every sampled node (FedAvg and its
    subclasses build one RecordDict, with the global arrays and the train config, and send it to
    each node). Every client's message is built from it, so this is checked: a Flower that gives
    nodes different content (or none) is an error, not a silently dropped difference."""
    if not flower_messages:
        raise flower_mismatch(f"{strategy_name}: Flower's configure_train sampled no node (fraction_train=1.0)")
    first = flower_messages[0]
    shared = first.content
    for message in flower_messages[1:]:
        if message.content is not shared and message.content != shared:
            raise flower_mismatch(
                f"{strategy_name}: Flower's configure_train gave node {message.metadata.dst_node_id} other content "
                f"than node {first.metadata.dst_node_id}, where fedquant builds every client's message from one "
                "shared record")
    return shared


def dispatch_order(messages: list[Message], clients: list[int], node_index: dict[int, int],
                   client_work: list[int] | None) -> tuple[list[Message], list[int]]:
    """Nodes in the order the engine serves them, clients longest job first.

    Flower's simulation engine queues the round's messages in the order of its node indices
    (``node_index``: node id -> index, learnt from the replies) and hands them to the workers as
    they free up; sending the longest local trainings (``client_work``) first shortens the round
    (the last job to finish is a short one). Results do not depend on it: a client's training
    depends only on its partition, seed and bit-widths, and replies are aggregated in client order.
    """
    messages = sorted(messages, key=lambda m: (node_index.get(m.metadata.dst_node_id, len(messages)),
                                               m.metadata.dst_node_id))
    if client_work is not None:
        clients = sorted(clients, key=lambda c: (-client_work[c], c))
    return messages, clients


def round_settings(plan: TrainingPlan, server_round: int, freezing: bool) -> dict:
    """What every client of the round is told alike: the learning rate and, when oscillations
    are dampened or counted, the dampening weight and the bit-width they are counted at."""
    settings = {P.LR: plan.lr_schedule(server_round)} if plan.lr_schedule else {}
    if plan.oscillation is not None:
        settings |= {P.DAMPEN: plan.oscillation.dampen_at(server_round),
                     P.TRACK_BITS: plan.oscillation.ref_bits if freezing else 0}
    return settings


def frozen_masks(freeze: FreezeState | None) -> ArrayRecord | None:
    """The frozen entries' masks, sent with every client's message (None: nothing frozen)."""
    if freeze is None or not freeze.frozen:
        return None
    return ArrayRecord({k: m.to(torch.uint8) for k, m in freeze.frozen.items()})


def client_messages(job: RoundInFlight, plan: TrainingPlan, shared: RecordDict, nodes: list[int],
                    clients: list[int], attempt: int, *, node_of: dict[int, int] | None,
                    freeze: FreezeState | None, arrays_key: str, config_key: str,
                    links: Links | None = None) -> list[Message]:
    """One training Message per client of ``clients``, in that order. Without ``node_of`` the
    clients are dealt out over ``nodes`` in turn: with as many nodes as clients per round
    (fedquant's own simulation) each node trains one client; with fewer (e.g. ``flwr run``'s
    default federation) a node trains several, one after the other. With ``node_of``
    (deployment) each goes to the node that holds its data. Records which node got which
    clients in ``job.node_clients``."""
    r = job.server_round
    job.node_clients = {}
    settings = round_settings(plan, r, freeze is not None)
    frozen = frozen_masks(freeze)
    arrays = shared.array_records[arrays_key]
    if links is not None and not links.off:  # the broadcast on the downlink grid, and how to reply
        arrays, job.received = downlink(arrays, links)
        settings = {**settings, **link_config(links, r, links.keep_from(r))}
    sent_bytes = record_bytes(arrays, frozen)
    out = []
    for i, client in enumerate(clients):
        node = node_of[client] if node_of else nodes[i % len(nodes)]
        sampling, bit_settings = plan.assignment(r, client)
        node_config = ConfigRecord({
            **dict(shared.config_records[config_key]), **settings,
            P.PARTITION: client, P.SAMPLING: sampling, P.SETTINGS: bit_settings, P.WIDTH: plan.width(client),
            **P.scheme_record(plan.scheme_of(client)), P.SEED: plan.client_seed(r, client),
            P.INJECT_FAILURE: plan.injects_failure(r, client, attempt),
            P.INJECT_NAN: plan.injects_nan(r, client), **attack_record(plan.attack(r, client)),
        })
        content = RecordDict({arrays_key: arrays, config_key: node_config})
        if frozen is not None:
            content[P.FROZEN] = frozen
        job.node_clients.setdefault(node, []).append(client)
        job.downlink_bytes[client] = sent_bytes
        out.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node))
    return out
