"""harness.atomic replaces a file by renaming a finished temporary onto it, never by writing it in place:
a reader holding the old file (here: a second hard link to it) keeps the old bytes whole."""

import os

from harness.atomic import write_bytes, write_json


def test_write_bytes_renames_a_new_file_onto_the_target(tmp_path):
    target, reader = tmp_path / "findings.json", tmp_path / "reader-view.json"
    write_bytes(target, "old contents")
    os.link(target, reader)  # the same inode as the target: an in-place write would change it too
    inode = target.stat().st_ino
    write_bytes(target, "new contents")
    assert target.read_text() == "new contents"
    assert reader.read_text() == "old contents" and target.stat().st_ino != inode
    write_json(target, {"a": 1})
    assert reader.read_text() == "old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["findings.json", "reader-view.json"]
