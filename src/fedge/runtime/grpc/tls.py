"""TLS for a test deployment: a CA, one certificate per node, gRPC credentials from them.

Every node's certificate carries its node id as the subject common name (and, from this
version on, as a DNS name, so a child can check it reached the parent it meant whatever
address it dialled: ``grpc.ssl_target_name_override``); servers require a
client certificate signed by the CA and check that the id a client claims is the one its
certificate names (per-node authentication). Keys are EC P-256, written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedge.core.errors import FedgeError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 365


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedge test deployment"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    hosts: Sequence[str] = (),
    ca: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return builder.sign(signer, hashes.SHA256())


@dataclass(frozen=True)
class CertsReport:
    """What ``issue_certs`` did in a directory: the CA it reused or made, and the node
    certificates it created, kept (valid and signed by that CA) or replaced."""

    root: Path
    ca_reused: bool
    created: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """One line per fact, for the command line."""
        out = [f"CA: {'kept' if self.ca_reused else 'created'} {self.root / CA_CERT}"]
        for verb, nodes in (
            ("created", self.created),
            ("kept", self.kept),
            ("replaced", self.replaced),
        ):
            if nodes:
                out.append(f"{verb} ({len(nodes)}): {', '.join(nodes)}")
        return out


def make_certs(
    directory: str | Path, node_ids: Sequence[str], hosts: Sequence[str] = DEFAULT_HOSTS
) -> Path:
    """Write ``ca.pem`` / ``ca.key`` and ``<node>.pem`` / ``<node>.key`` for every node.

    An existing CA in ``directory`` is reused, so certificates can be added later; existing
    node certificates of that CA are kept (see ``issue_certs``).
    """
    return issue_certs(directory, node_ids, hosts).root


def issue_certs(
    directory: str | Path,
    node_ids: Sequence[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    replace: Sequence[str] = (),
) -> CertsReport:
    """Certificates for ``node_ids`` in ``directory``, never silently rotating a key: a
    node's existing certificate is kept when the CA signed it, replaced when the user names
    the node in ``replace`` (or when it is not the CA's, e.g. after a new CA), else created."""
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise FedgeError(f"certs: {root} is a file; allowed: a directory (new or existing)")
    root.mkdir(parents=True, exist_ok=True)
    bad = [n for n in node_ids if not n or "/" in n or n.startswith(".")]
    if bad:
        raise FedgeError(f"node ids {bad!r} cannot name certificate files")
    unknown = [n for n in replace if n not in node_ids]
    if unknown:
        raise FedgeError(f"certs --replace: {unknown!r} are not among the nodes {list(node_ids)}")
    ca_reused = (root / CA_KEY).exists() and (root / CA_CERT).exists()
    ca_key, ca_cert = _load_or_make_ca(root)
    done: dict[str, list[str]] = {"created": [], "kept": [], "replaced": []}
    for node in node_ids:
        exists = (root / f"{node}.pem").exists() and (root / f"{node}.key").exists()
        if exists and node not in replace and _signed_by(root / f"{node}.pem", ca_cert):
            done["kept"].append(node)
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(node, key, ca_cert.subject, ca_key, list(dict.fromkeys([*hosts, node])))
        _write_key(key, root / f"{node}.key")
        (root / f"{node}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        done["replaced" if exists else "created"].append(node)
    return CertsReport(root, ca_reused, *(tuple(done[k]) for k in ("created", "kept", "replaced")))


def _signed_by(path: Path, ca: x509.Certificate) -> bool:
    """Whether the certificate in ``path`` is readable and was issued by ``ca``."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _load_or_make_ca(root: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if (root / CA_KEY).exists() and (root / CA_CERT).exists():
        try:
            key = serialization.load_pem_private_key((root / CA_KEY).read_bytes(), None)
        except (ValueError, TypeError) as exc:
            raise FedgeError(
                f"{root / CA_KEY}: not a readable PEM private key ({exc}); allowed: the CA key "
                "written by `fedge certs`, or remove ca.key and ca.pem to make a new CA"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FedgeError(f"{root / CA_KEY} is not an EC private key")
        try:
            cert = x509.load_pem_x509_certificate((root / CA_CERT).read_bytes())
        except ValueError as exc:
            raise FedgeError(
                f"{root / CA_CERT}: not a readable PEM certificate ({exc}); allowed: the CA "
                "certificate written by `fedge certs`"
            ) from None
        return key, cert
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("fedge test CA", key, _name("fedge test CA"), key, ca=True)
    _write_key(key, root / CA_KEY)
    (root / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def names_node(directory: Path, node_id: str) -> bool:
    """Whether ``node_id``'s certificate in ``directory`` carries its id as a DNS name, so a
    child can insist on talking to that node whatever address it dials (a proxy, NAT)."""
    try:
        cert = x509.load_pem_x509_certificate((directory / f"{node_id}.pem").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    return node_id in san.get_values_for_type(x509.DNSName)


@dataclass(frozen=True)
class NodeCerts:
    """The PEM files one node needs: the CA, its own certificate and key."""

    ca: bytes
    cert: bytes
    key: bytes

    @staticmethod
    def load(directory: str | Path, node_id: str) -> NodeCerts:
        root = Path(directory)
        paths = [root / CA_CERT, root / f"{node_id}.pem", root / f"{node_id}.key"]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FedgeError(
                f"no TLS files for node {node_id!r}: missing {', '.join(missing)}; "
                f"create them with `fedge certs {root} --nodes {node_id}`"
            )
        ca, cert, key = (p.read_bytes() for p in paths)
        return NodeCerts(ca, cert, key)

    def server(self) -> grpc.ServerCredentials:
        """Server credentials that require a client certificate signed by the CA."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
