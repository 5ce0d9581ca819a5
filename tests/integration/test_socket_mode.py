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
    for extra, mode in (([], 0o600), (["--socket-mode", "0660", "--socket-group", group], 0o660)):
        path = tmp_path / f"lowwater-{mode:o}.sock"
        sidecar = SidecarProcess(kafka_bootstrap, unique_name("g"), [topic], extra=extra,
                                 socket_path=str(path))
        with sidecar:
            info = path.stat()
            assert stat.S_ISSOCK(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == mode, oct(info.st_mode)
            assert info.st_gid == os.getgid()
            assert sidecar.stop() == 0
        assert not path.exists()  # removed on exit


def test_an_unknown_group_stops_start_up_with_a_message(
    kafka_bootstrap: str, new_topic: TopicFactory, tmp_path: Path
) -> None:
    sidecar = SidecarProcess(kafka_bootstrap, unique_name("g"), [new_topic(1)],
                             extra=["--socket-mode", "0660", "--socket-group", "no-such-group"],
                             socket_path=str(tmp_path / "s.sock"))
    sidecar.start(wait_serving=False)
    try:
        assert sidecar.proc is not None and sidecar.proc.wait(30) == 1
    finally:
        sidecar.kill()
    assert "cannot set the mode or group of unix:" in sidecar.log()
