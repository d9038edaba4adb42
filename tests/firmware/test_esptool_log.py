from __future__ import annotations

import pytest

from otaship.firmware.esptool_log import quiet_esptool


def test_esptool_log_output_is_captured(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from esptool.logger import EspLog, log

    before = EspLog.instance
    with quiet_esptool():
        log.print("segment table")
        log.warn("suspicious segment")
    assert EspLog.instance is before
    assert capfd.readouterr() == ("", "")
    assert "esptool: suspicious segment" in caplog.text
