"""python -m fedquant.deploy: a local CA, the SuperLink's certificate and SuperNode key pairs in
the formats Flower reads (the secured loopback run is tests/test_flower_app.py)."""

from __future__ import annotations

import ipaddress
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from flwr.cli.supernode.register import try_load_public_key  # what `flwr supernode register` reads

from fedquant.deploy.__main__ import main
from fedquant.deploy.certificates import write_credentials


def handshake(cert, key, ca, hostname: str) -> None:
    """A TLS handshake in memory: a server with (cert, key), a client that trusts only `ca` and
    checks `hostname` (Python's ssl, i.e. OpenSSL, like the SuperLink's uvicorn and Flower's httpx)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(ca))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side, out, peer in (("client", client, c_out, s_in), ("server", server, s_out, c_in)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            peer.write(out.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def test_credentials_are_a_ca_a_server_certificate_and_node_keys_flower_reads(tmp_path, capsys):
    out = tmp_path / "creds"
    main([str(out), "--nodes", "3", "--host", "superlink.example", "--host", "10.0.0.5"])
    printed = capsys.readouterr().out
    assert f"--ssl-ca-certfile {out / 'ca.crt'}" in printed and "--enable-supernode-auth" in printed
    names = {"ca.crt", "ca.key", "superlink.crt", "superlink.key",
             *(f"supernode-{k}.{ext}" for k in range(3) for ext in ("key", "pub"))}
    assert {p.name for p in out.iterdir()} == names  # no temporary file left
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == (0o600 if p.suffix == ".key" else 0o644), p.name

    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "superlink.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)  # the CA signed the SuperLink's certificate
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "superlink.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                         ipaddress.ip_address("10.0.0.5")]
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier  # RFC 5280 / web PKI rules
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.DNSName("superlink.example")):
        verifier(name).verify(server, [])
    with pytest.raises(VerificationError):
        verifier(x509.DNSName("elsewhere.example")).verify(server, [])
    ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), None)
    server_key = serialization.load_pem_private_key((out / "superlink.key").read_bytes(), None)
    assert ca_key.public_key() == ca.public_key() and server_key.public_key() == server.public_key()

    handshake(out / "superlink.crt", out / "superlink.key", out / "ca.crt", "localhost")
    handshake(out / "superlink.crt", out / "superlink.key", out / "ca.crt", "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):  # a name the certificate is not for
        handshake(out / "superlink.crt", out / "superlink.key", out / "ca.crt", "elsewhere.example")

    for k in range(3):
        private = serialization.load_ssh_private_key((out / f"supernode-{k}.key").read_bytes(), None)
        public = serialization.load_ssh_public_key((out / f"supernode-{k}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
        assert private.public_key() == public  # the .pub belongs to the .key
        assert serialization.load_pem_public_key(try_load_public_key(out / f"supernode-{k}.pub")) == public


def test_other_ca_is_not_trusted(tmp_path):
    a, b = write_credentials(tmp_path / "a", nodes=1), write_credentials(tmp_path / "b", nodes=1)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(a.superlink_cert, a.superlink_key, b.ca_cert, "localhost")


@pytest.mark.parametrize(("args", "message"), [
    (["--nodes", "0"], "--nodes must be a whole number from 1 to 1000, got 0"),
    (["--days", "0"], "--days must be a whole number from 1 to 3650, got 0"),
    (["--host", "super link"], "--host 'super link' is neither a DNS name nor an IP address"),
    (["--host", "10.0.0.300"], "--host '10.0.0.300' is neither a DNS name nor an IP address"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "creds"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "creds").exists()


def test_existing_credentials_are_kept_unless_forced(tmp_path, capsys):
    out = tmp_path / "creds"
    main([str(out), "--nodes", "1"])
    ca = (out / "ca.crt").read_bytes()
    with pytest.raises(SystemExit) as e:
        main([str(out), "--nodes", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {out} already holds ca.crt, ca.key, superlink.crt") and "--force" in err
    assert (out / "ca.crt").read_bytes() == ca
    main([str(out), "--nodes", "1", "--force"])
    assert (out / "ca.crt").read_bytes() != ca
    assert stat.S_IMODE((out / "supernode-0.key").stat().st_mode) == 0o600
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "file")])
    assert capsys.readouterr().err == f"error: {tmp_path / 'file'} is a file, not a folder\n"
