from __future__ import annotations

import stat
from pathlib import Path

import pytest

from otaship.firmware.image import inspect_firmware
from otaship.firmware.signatures import read_sector, verify_signature
from otaship.firmware.signing import SigningFailed, private_key_file, public_key_of, sign_image
from otaship.firmware.signing_keys import Scheme, load_public_key
from tests.esp_image import write_image
from tests.signing import private_pem, public_pem


def test_the_key_file_is_0600_and_gone_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    pem = private_pem(Scheme.ECDSA_P256)
    with private_key_file(pem) as path:
        assert path.read_bytes() == pem
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.parent.parent == tmp_path
    assert not path.exists() and list(tmp_path.iterdir()) == []
    # Gone on an error too.
    with pytest.raises(RuntimeError), private_key_file(pem) as path:
        raise RuntimeError("espsecure failed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("scheme", [Scheme.RSA_3072, Scheme.ECDSA_P256, Scheme.ECDSA_P384])
def test_sign_image_signs_with_each_key(tmp_path: Path, scheme: Scheme) -> None:
    # A chip whose bootloader reads all three blocks (ESP32 reads only the first).
    source = write_image(tmp_path / "app.bin", "1.0.0", chip="esp32c5")
    keys = [private_pem(scheme), private_pem(scheme, "second")]
    sign_image(source, keys, tmp_path / "signed.bin")
    image = inspect_firmware(tmp_path / "signed.bin")
    assert image.signature_sector is not None
    public = [load_public_key(public_key_of(key)) for key in keys]
    assert public[0] == load_public_key(public_pem(keys[0]))
    data = (tmp_path / "signed.bin").read_bytes()
    assert [b.key_digest for b in read_sector(data[image.signature_sector :]).blocks] == [
        k.digest for k in public
    ]
    assert verify_signature(tmp_path / "signed.bin", image, public).key_digests == tuple(
        k.digest for k in public
    )


def test_a_bad_key_is_refused_without_its_content(tmp_path: Path) -> None:
    source = write_image(tmp_path / "app.bin", "1.0.0")
    secret = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBtYXRlcmlhbA==\n-----END PRIVATE KEY-----\n"
    with pytest.raises(SigningFailed) as caught:
        sign_image(source, [secret], tmp_path / "signed.bin")
    assert "c2VjcmV0" not in str(caught.value)
    with pytest.raises(SigningFailed, match="not an unencrypted PEM private key"):
        public_key_of(secret)
