"""An in-process stand-in for Flower's Grid: the real ClientApp handler, no Ray, synchronous.

Used to test strategies and clients together quickly and deterministically; the end-to-end tests
go through Flower's simulation engine and Ray for real.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Error, Message
from flwr.supercore.task_identity import TaskIdentity

from clients import ClientSetup, handle_train
from fedquant.federation.protocol import train_record
from strategies import build_strategy


def set_identity() -> None:
    """Message() needs a run/task identity, which Flower sets when it runs an app."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


class InProcessGrid:
    def __init__(self, setup: ClientSetup, num_nodes: int) -> None:
        set_identity()
        self.setup = setup
        self.node_ids = [1000 + 7 * i for i in range(num_nodes)]
        # the engine's own node numbering, unrelated to the ids (as in Flower's simulation)
        self.node_index = {node: i for i, node in enumerate(reversed(self.node_ids))}
        self.sent: list[Message] = []

    def get_node_ids(self):
        return list(self.node_ids)

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        self.sent += messages
        return [self._call(m) for m in messages]

    def _call(self, msg: Message) -> Message:
        try:
            return handle_train(self.setup, msg, self.node_index[msg.metadata.dst_node_id])
        except Exception as err:  # as Flower's simulation engine does: an error reply
            return Message(Error(0, f"Exception ClientAppException occurred. Message: {err}'>"), reply_to=msg)


def recording_strategy(server, plan, **kwargs):
    """``build_strategy`` whose round reports are kept in ``strategy.reports`` (round -> report)."""
    reports: dict = {}
    strategy = build_strategy(server, plan, on_report=reports.__setitem__, **kwargs)
    strategy.reports = reports
    return strategy


def train_config(cfg) -> ConfigRecord:
    """The shared training ConfigRecord the app sends, from a composed config."""
    return ConfigRecord(train_record(cfg["client"], cfg["dataset"]["augment"]))


def run_experiment_inprocess(cfg, output_dir) -> dict:
    """:func:`fedquant.app.run_experiment` on an :class:`InProcessGrid` instead of Flower's
    simulation engine: the same Experiment (rounds, evaluation, checkpoints, resume, results),
    without starting Ray (for tests that check results, not the engine)."""
    from fedquant.app import Experiment, client_setup

    experiment = Experiment(cfg, output_dir)
    try:
        experiment.serve(InProcessGrid(client_setup(cfg, output_dir), cfg["clients_per_round"]))
        return experiment.finish(0.0)
    finally:
        experiment.close()
