"""What the server and the clients share: bit-width settings, device profiles, the round plan,
the message schema and the round reports. Plain Python/NumPy: ``strategies/`` and ``clients/``
both import it, so neither imports the other."""
