"""The sidecar's TLS files are checked as OpenSSL reads them, at start-up and on rotation.

gRPC reports a bad certificate or key only as a failure to bind, so without these checks a
typo in a path's content looked like a taken port (exit 1, naming the address).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from coordinator.config import ConfigError
from coordinator.runtime.tls import CertificateFiles, check_files
from tests.support.certs import write_server_files


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A directory with a valid ``tls.crt``, ``tls.key`` and ``ca.crt``."""
    ca = trustme.CA()
    write_server_files(ca, tmp_path)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    return tmp_path


def _encrypted(key: bytes) -> bytes:
    return serialization.load_pem_private_key(key, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))


def _other_key() -> bytes:
    return trustme.CA().issue_cert("127.0.0.1").private_key_pem.bytes()


def test_valid_files_pass(files: Path) -> None:
    check_files(files / "tls.crt", files / "tls.key", files / "ca.crt")
    check_files(files / "tls.crt", files / "tls.key", None)


@pytest.mark.parametrize(("name", "content", "setting", "says"), [
    pytest.param("tls.crt", b"not a certificate\n", "tls_cert_file", "holds no PEM certificate",
                 id="cert text"),
    pytest.param("tls.crt", b"\x30\x82\x01\x0a\x02\x82", "tls_cert_file",
                 "holds no PEM certificate", id="cert DER"),
    pytest.param("tls.crt", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                 "tls_cert_file", "holds no PEM certificate", id="cert PEM garbage"),
    pytest.param("tls.crt", b" \n", "tls_cert_file", "is empty", id="cert empty"),
    pytest.param("tls.key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                 "tls_key_file", "holds no PEM private key", id="key PEM garbage"),
    pytest.param("tls.key", _other_key(), "tls_key_file",
                 "is not the private key of the certificate in", id="key of another cert"),
    pytest.param("tls.key", None, "tls_key_file", "is encrypted", id="key encrypted"),
    pytest.param("ca.crt", b"not a certificate\n", "tls_client_ca_file",
                 "holds no PEM certificate", id="client CA text"),
])
def test_a_bad_file_names_its_setting(
    files: Path, name: str, content: bytes | None, setting: str, says: str
) -> None:
    path = files / name
    path.write_bytes(_encrypted(path.read_bytes()) if content is None else content)
    with pytest.raises(ConfigError) as info:
        check_files(files / "tls.crt", files / "tls.key", files / "ca.crt")
    assert info.value.setting == setting
    assert f"{path} {says}" in str(info.value)


def test_a_certificate_file_holding_the_key_is_refused(files: Path) -> None:
    (files / "ca.crt").write_bytes((files / "tls.key").read_bytes())
    with pytest.raises(ConfigError) as info:
        check_files(files / "tls.crt", files / "tls.key", files / "ca.crt")
    assert info.value.setting == "tls_client_ca_file"


def test_start_up_refuses_bad_files_and_a_rotation_to_bad_files_keeps_the_current_ones(
    files: Path,
) -> None:
    tls = CertificateFiles(files / "tls.crt", files / "tls.key", None)
    good_key = (files / "tls.key").read_bytes()
    (files / "tls.key").write_bytes(_other_key())
    with pytest.raises(ConfigError, match="'tls_key_file'"):
        tls.initial()
    (files / "tls.key").write_bytes(good_key)
    assert tls.initial() is not None and tls.reloads == 1
    (files / "tls.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nMII")  # caught half-written
    assert tls.fetch() is None
    assert tls.reloads == 1
    write_server_files(trustme.CA(), files)  # the rotation completes
    assert tls.fetch() is not None
    assert tls.reloads == 2
