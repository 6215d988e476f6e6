"""Certificates are never rotated silently; a child refused for good stops instead of
reconnecting in a loop, while a parent that is merely down is retried with back-off."""

import time
from pathlib import Path

import pytest

pytest.importorskip("grpc")

from fedge.cli import main
from fedge.core.node import NodeApp
from fedge.runtime.grpc.attach import ParentRefused
from fedge.runtime.grpc.node import NodeProcess
from fedge.runtime.grpc.settings import GrpcSettings
from fedge.runtime.grpc.tls import issue_certs

pytestmark = pytest.mark.grpc

FAST = GrpcSettings(connect_timeout_s=2.0, retry_initial_s=0.05, retry_max_s=0.1)


def only_d_devices(node_id: str, tier: str) -> str | None:
    return None if node_id.startswith("d") else f"{node_id} is not a device of this run"


def test_a_child_refused_for_good_stops_with_one_error_and_no_retries():
    cloud = NodeProcess(FAST, None, seed=1)
    child = NodeProcess(FAST, None, seed=1)
    try:
        cloud.serve("cloud", "127.0.0.1:0", only_d_devices)
        child.attach(NodeApp("x7", "device", {}), [f"127.0.0.1:{cloud.port}"])
        started = time.monotonic()
        with pytest.raises(ParentRefused, match=r"PERMISSION_DENIED.*x7 is not a device"):
            child.wait(10.0)
        assert time.monotonic() - started < 5.0
        time.sleep(0.5)  # a retry loop would keep knocking every 0.05-0.1 s
        assert cloud.hub is not None and cloud.hub.counters["rejected"] == 1
    finally:
        child.close()
        cloud.close()


def test_a_parent_that_is_down_is_retried_not_given_up():
    child = NodeProcess(FAST, None, seed=1)
    try:
        attachment = child.attach(NodeApp("d1", "device", {}), ["127.0.0.1:9"])  # discard port
        assert child.wait(1.0) is False  # still trying: no failure, no shutdown
        assert child.failure is None and attachment.parents == ["127.0.0.1:9"]
    finally:
        child.close()


def test_certs_keep_existing_keys_and_replace_only_when_asked(tmp_path, capsys):
    first = issue_certs(tmp_path, ["a", "b"])
    assert (first.ca_reused, first.created, first.kept) == (False, ("a", "b"), ())
    key_a = (tmp_path / "a.key").read_bytes()
    key_b = (tmp_path / "b.key").read_bytes()
    assert main(["certs", str(tmp_path), "--nodes", "a,b,c"]) == 0
    out = capsys.readouterr().out
    assert "CA: kept" in out and "created (1): c" in out and "kept (2): a, b" in out
    assert (tmp_path / "a.key").read_bytes() == key_a
    assert main(["certs", str(tmp_path), "--nodes", "a,b", "--replace", "b"]) == 0
    assert "replaced (1): b" in capsys.readouterr().out
    assert (tmp_path / "a.key").read_bytes() == key_a
    assert (tmp_path / "b.key").read_bytes() != key_b


def test_a_node_certificate_of_another_ca_is_replaced_and_said(tmp_path):
    issue_certs(tmp_path, ["a"])
    for name in ("ca.key", "ca.pem"):
        (tmp_path / name).unlink()
    report = issue_certs(tmp_path, ["a"])
    assert report.replaced == ("a",) and not report.ca_reused


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["serve", "cloud", "--insecure", "--listen", "nohost"], "--listen: got 'nohost'"),
        (["serve", "edge", "--insecure", "--listen", "h:70000", "--parent", "p:1"], "--listen"),
        (["serve", "device", "--insecure", "--parent", "host-without-port"], "--parent"),
    ],
)
def test_bad_addresses_are_one_line(tmp_path, capsys, tiny_config, argv, says):
    assert main([*argv, "--config", str(tiny_config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedge: error: ") and says in err and len(err.splitlines()) == 1


def test_a_corrupt_ca_key_is_one_line(tmp_path: Path, capsys):
    issue_certs(tmp_path, ["a"])
    (tmp_path / "ca.key").write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n")
    assert main(["certs", str(tmp_path), "--nodes", "b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedge: error: ") and "ca.key" in err and len(err.splitlines()) == 1


def test_an_address_of_another_machine_is_a_clear_error():
    from fedge.core.errors import FedgeError

    cloud = NodeProcess(FAST, None, seed=1)
    try:
        with pytest.raises(FedgeError, match=r"--listen: cannot listen on .192\.0\.2\.1:50999."):
            cloud.serve("cloud", "192.0.2.1:50999", only_d_devices)  # TEST-NET-1
    finally:
        cloud.close()
