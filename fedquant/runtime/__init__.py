"""Adapters to the process and the machine: checkpoints, the allocator setting, and (in
``runtime.simulation``, imported only by the composition root) Flower's simulation engine."""
