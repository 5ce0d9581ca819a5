"""The security flags of ``lowwater status`` and ``lowwater top``: a bad one exits 2 with one
line naming it, before any connection is tried (the target is unreachable on purpose)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from coordinator import admin_client, cli

UNREACHABLE = ["--target", "127.0.0.1:1"]


@pytest.fixture(autouse=True)
def no_admin_token_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep this machine's defaults of ``--token-file`` and ``--token-env`` out."""
    for name in (admin_client.TOKEN_FILE_ENV, admin_client.TOKEN_ENV_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A file that exists; its content is not read before the connection."""
    path = tmp_path / "some.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command", ["status", "top"])
@pytest.mark.parametrize(("flags", "expected"), [
    (["--token-file", "/nonexistent/token"],
     "error: --token-file: /nonexistent/token is not a readable file"),
    (["--token-env", "LW_TEST_NO_SUCH_VARIABLE"],
     "error: --token-env: $LW_TEST_NO_SUCH_VARIABLE is not set or empty"),
    (["--tls-ca-file", "/nonexistent/ca.crt"],
     "error: --tls-ca-file: /nonexistent/ca.crt is not a readable file"),
    (["--tls-cert-file", "{pem}"], "error: --tls-cert-file and --tls-key-file go together"),
    (["--tls-key-file", "{pem}"], "error: --tls-cert-file and --tls-key-file go together"),
])
def test_a_bad_security_flag_exits_2_naming_it(
    command: str, flags: list[str], expected: str, pem: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [command, *UNREACHABLE, *(f.format(pem=pem) for f in flags)]
    assert cli.main(argv) == 2
    err = _error(capsys)
    assert err.startswith(f"lowwater {command}: {expected}"), err
    assert err.endswith(f"(see 'lowwater {command} --help')\n")


def test_an_empty_token_file_or_variable_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "token").write_text("\n")
    assert cli.main(["status", *UNREACHABLE, "--token-file", str(tmp_path / "token")]) == 2
    assert f"error: --token-file {tmp_path / 'token'} is empty" in _error(capsys)
    monkeypatch.setenv("LW_TEST_BLANK_TOKEN", "  ")
    assert cli.main(["status", *UNREACHABLE, "--token-env", "LW_TEST_BLANK_TOKEN"]) == 2
    assert "error: --token-env: $LW_TEST_BLANK_TOKEN is not set or empty" in _error(capsys)


def test_token_file_and_token_env_exclude_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", *UNREACHABLE, "--token-file", "x", "--token-env", "Y"]) == 2
    assert "argument --token-env: not allowed with argument --token-file" in _error(capsys)


def test_the_token_flag_carries_no_value() -> None:
    """Only a file or a variable's name: a token on the command line shows in ``ps``."""
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["status", "--token", "s3cret"])


def test_the_sidecars_admin_token_variables_are_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOWWATER_ADMIN_TOKEN_FILE", "/nonexistent/admin-token")
    assert cli.main(["status", *UNREACHABLE]) == 2
    assert ("error: --token-file (from $LOWWATER_ADMIN_TOKEN_FILE): /nonexistent/admin-token"
            " is not a readable file") in _error(capsys)
    monkeypatch.delenv("LOWWATER_ADMIN_TOKEN_FILE")
    monkeypatch.setenv("LOWWATER_ADMIN_TOKEN_ENV", "LW_TEST_ADMIN_TOKEN")
    monkeypatch.setenv("LW_TEST_ADMIN_TOKEN", "adm1n")
    args = cli.build_parser().parse_args(["status"])
    security = admin_client.security_from_args(args)
    assert security.call_metadata() == (("authorization", "Bearer adm1n"),)
    assert security.tls is None
    # A flag beats the variables.
    (tmp_path / "token").write_text("fr0m-file\n")
    args = cli.build_parser().parse_args(["status", "--token-file", str(tmp_path / "token")])
    assert admin_client.security_from_args(args).call_metadata() == (
        ("authorization", "Bearer fr0m-file"),)


def test_no_flags_and_no_variables_mean_plaintext_without_a_token() -> None:
    security = admin_client.security_from_args(cli.build_parser().parse_args(["top"]))
    assert security.token is None and security.tls is None
    assert security.call_metadata() is None and security.channel_credentials() is None


DOCS = [Path(__file__).parents[2] / "docs" / name for name in ("metrics.md", "operations.md")]
DOC_EXAMPLES = [example for doc in DOCS for example in re.findall(
    r"^\$ lowwater ((?:status|top) .*)\n(lowwater (?:status|top): error: .*)$", doc.read_text(),
    re.MULTILINE)]


@pytest.mark.parametrize(("command", "message"), DOC_EXAMPLES)
def test_docs_security_flag_examples_are_current(
    command: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("ca.crt", "operator.crt", "operator.key", "admin-token"):
        (tmp_path / name).write_text("x\n")
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    assert cli.main(shlex.split(command)) == 2
    assert capsys.readouterr().err == message + "\n"


def test_docs_have_security_flag_examples() -> None:
    assert len(DOC_EXAMPLES) >= 2
