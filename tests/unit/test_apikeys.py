"""The API key file shared by the engines and the gateway: format, rotation, header parsing."""
import os

import pytest

from modelyard.apikeys import KeyFile, KeyFileError, read_keys


def test_keys_one_per_line_comments_and_blanks_ignored(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# ops team\nsk-one\n\n  sk-two  \n")
    assert read_keys(f) == {"sk-one", "sk-two"}


def test_missing_or_empty_file_is_a_clear_error(tmp_path):
    with pytest.raises(KeyFileError, match="cannot read"):
        read_keys(tmp_path / "nope")
    (tmp_path / "empty").write_text("\n# nothing\n")
    with pytest.raises(KeyFileError, match="holds no key"):
        read_keys(tmp_path / "empty")


def test_check_header_accepts_only_bearer_with_a_listed_key(tmp_path):
    f = tmp_path / "keys"
    f.write_text("sk-good\n")
    kf = KeyFile(f)
    assert kf.check_header("Bearer sk-good")
    assert kf.check_header("bearer sk-good")
    assert not kf.check_header("Bearer sk-bad")
    assert not kf.check_header("sk-good")
    assert not kf.check_header("Basic sk-good")
    assert not kf.check_header(None)
    assert not kf.check_header("Bearer ")


def test_rotation_is_picked_up_and_a_blank_rewrite_keeps_the_last_keys(tmp_path):
    f = tmp_path / "keys"
    f.write_text("sk-old\n")
    kf = KeyFile(f)
    assert kf.check("sk-old")
    f.write_text("sk-new-longer\n")
    os.utime(f, ns=(1, 1))  # a different mtime even on coarse clocks
    assert kf.check("sk-new-longer") and not kf.check("sk-old")
    f.write_text("")
    os.utime(f, ns=(2, 2))
    assert kf.check("sk-new-longer")
