"""The worker socket's mode and group: only the sidecar's user, or its group too."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

from coordinator.embedded import SidecarProcess
from tests.support.broker import TopicFactory, unique_name


def test_the_socket_is_the_users_alone_by_default_or_shared_with_a_group(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topic = new_topic(1)
    group = grp.getgrgid(os.getgid()).gr_name
    shared = ["--socket-mode", "0660", "--socket-group"]
    cases: list[tuple[list[str], int]] = [
        ([], 0o600), ([*shared, group], 0o660),
        ([*shared, str(os.getgid())], 0o660)]  # a number needs no name
    for index, (extra, mode) in enumerate(cases):
        path = tmp_path / f"lowwater-{index}.sock"
        sidecar = SidecarProcess(kafka_bootstrap, unique_name("g"), [topic], extra=extra,
                                 socket_path=str(path))
        with sidecar:
            info = path.stat()
            assert stat.S_ISSOCK(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == mode, oct(info.st_mode)
            assert info.st_gid == os.getgid()
            assert sidecar.stop() == 0
        assert not path.exists()  # removed on exit


def test_an_unknown_group_is_a_bad_setting(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    """Checked with the other settings, before anything binds: exit 2, naming it."""
    path = tmp_path / "s.sock"
    sidecar = SidecarProcess(kafka_bootstrap, unique_name("g"), [new_topic(1)],
                             extra=["--socket-mode", "0660", "--socket-group", "no-such-group"],
                             socket_path=str(path))
    sidecar.start(wait_serving=False)
    try:
        assert sidecar.proc is not None and sidecar.proc.wait(30) == 2
    finally:
        sidecar.kill()
    assert ("lowwater: invalid setting 'socket_group': no group named 'no-such-group' on this"
            " host") in sidecar.log()
    assert not path.exists()
