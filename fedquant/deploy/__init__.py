"""``python -m fedquant.deploy``: the credentials of a secured Flower Deployment Engine (TLS and
SuperNode authentication) for a test federation; the command line is
:mod:`fedquant.deploy.__main__`. Needs ``cryptography`` only (installed with Flower), no Flower.

``certificates``  :func:`~fedquant.deploy.certificates.write_credentials`: a local certificate
                  authority, the SuperLink's TLS certificate signed by it, one SuperNode key pair
                  per node, in the formats ``flower-superlink``, ``flower-supernode`` and
                  ``flwr supernode register`` read
"""
