"""Files through the SDK: upload, download (whole and ranged, text and binary), info, search,
replace, move, chmod, delete, directories. Direct and through the server proxy."""

from __future__ import annotations

import os
import uuid

import pytest
from opensandbox.exceptions import SandboxException
from opensandbox.models.filesystem import (
    ContentReplaceEntry,
    MoveEntry,
    SearchEntry,
    SetPermissionEntry,
    WriteEntry,
)

from helpers import sh


@pytest.fixture
def d(shared):
    """A fresh directory per test inside the shared sandbox."""
    path = f"/tmp/sdk-files-{uuid.uuid4().hex[:8]}"
    shared.files.create_directories([WriteEntry(path=path, mode=755)])
    return path


def test_upload_then_download_text_and_info(shared, d):
    shared.files.write_file(f"{d}/hello.txt", "hello world\nsecond line\n", mode=644)
    assert shared.files.read_file(f"{d}/hello.txt") == "hello world\nsecond line\n"
    # The file really is in the sandbox, with that mode.
    assert sh(shared, f"cat {d}/hello.txt; stat -c %a {d}/hello.txt") == "hello world\nsecond line\n644"
    info = shared.files.get_file_info([f"{d}/hello.txt"])[f"{d}/hello.txt"]
    assert info.size == 24
    assert info.mode == 644
    assert info.owner == "root"


def test_binary_roundtrip_and_ranges(shared, d):
    blob = os.urandom(300_000) + bytes(range(256))
    shared.files.write_file(f"{d}/blob.bin", blob)
    assert shared.files.read_bytes(f"{d}/blob.bin") == blob
    assert sh(shared, f"stat -c %s {d}/blob.bin") == f"{len(blob)}"
    assert shared.files.read_bytes(f"{d}/blob.bin", range_header="bytes=10-19") == blob[10:20]
    assert shared.files.read_bytes(f"{d}/blob.bin", range_header=f"bytes={len(blob) - 256}-") == bytes(range(256))
    streamed = b"".join(shared.files.read_bytes_stream(f"{d}/blob.bin", chunk_size=65536))
    assert streamed == blob


def test_write_many_files_and_read_file_written_by_a_command(shared, d):
    shared.files.write_files([
        WriteEntry(path=f"{d}/a.txt", data="alpha"),
        WriteEntry(path=f"{d}/nested/b.txt", data=b"beta", mode=600),
    ])
    assert sh(shared, f"cat {d}/a.txt {d}/nested/b.txt; stat -c %a {d}/nested/b.txt") == "alphabeta600"
    sh(shared, f"printf 'from a command' > {d}/cmd.txt")
    assert shared.files.read_file(f"{d}/cmd.txt") == "from a command"


def test_search_finds_by_glob(shared, d):
    for name in ("one.py", "two.py", "notes.md", "deep/three.py"):
        shared.files.write_file(f"{d}/{name}", f"# {name}\n")
    found = shared.files.search(SearchEntry(path=d, pattern="*.py"))
    paths = sorted(e.path for e in found)
    assert paths == sorted([f"{d}/one.py", f"{d}/two.py", f"{d}/deep/three.py"]), paths
    assert all(e.size == len(f"# {e.path[len(d) + 1:]}\n") for e in found)


def test_replace_contents(shared, d):
    shared.files.write_file(f"{d}/cfg.ini", "host=old\nport=1\nname=old\n")
    shared.files.replace_contents([ContentReplaceEntry(path=f"{d}/cfg.ini", old_content="old", new_content="new-value")])
    assert shared.files.read_file(f"{d}/cfg.ini") == "host=new-value\nport=1\nname=new-value\n"


def test_move_then_old_path_is_gone(shared, d):
    shared.files.write_file(f"{d}/src.txt", "moving")
    shared.files.move_files([MoveEntry(src=f"{d}/src.txt", dest=f"{d}/dst.txt")])
    assert shared.files.read_file(f"{d}/dst.txt") == "moving"
    assert sh(shared, f"test -e {d}/src.txt && echo present || echo absent") == "absent"
    with pytest.raises(SandboxException):
        shared.files.read_file(f"{d}/src.txt")


def test_chmod(shared, d):
    shared.files.write_file(f"{d}/script.sh", "#!/bin/sh\necho ran script\n", mode=644)
    shared.files.set_permissions([SetPermissionEntry(path=f"{d}/script.sh", mode=750)])
    assert sh(shared, f"stat -c %a {d}/script.sh; {d}/script.sh") == "750\nran script"
    assert shared.files.get_file_info([f"{d}/script.sh"])[f"{d}/script.sh"].mode == 750


def test_delete_files_and_directories(shared, d):
    shared.files.write_file(f"{d}/gone.txt", "x")
    shared.files.write_file(f"{d}/sub/inner.txt", "y")
    shared.files.delete_files([f"{d}/gone.txt"])
    assert sh(shared, f"test -e {d}/gone.txt && echo present || echo absent") == "absent"
    shared.files.delete_directories([f"{d}/sub"])
    assert sh(shared, f"test -e {d}/sub && echo present || echo absent") == "absent"
    assert sh(shared, f"ls -A {d}") == ""


def test_missing_file_is_an_error(shared, d):
    with pytest.raises(SandboxException):
        shared.files.read_file(f"{d}/no-such-file")
    with pytest.raises(SandboxException):
        shared.files.get_file_info([f"{d}/no-such-file"])
