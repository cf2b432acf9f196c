"""Key encoding, bucket naming and the walk's order: pure rules, checked without S3."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_backup.disk.entries import DiskFile
from async_backup.disk.keys import (
    MAX_KEY_BYTES,
    KeyTooLongError,
    check_key_length,
    key_for_path,
    path_for_key,
    superseded_key,
)
from async_backup.disk.walk import Excluder, walk_target
from async_backup.errors import ConfigError
from async_backup.settings.config import FolderSpec, parse_config
from async_backup.settings.naming import bucket_name_problem, legacy_bucket_name, stable_bucket_name
from async_backup.settings.targets import discover_targets, nested_target_warnings

path_bytes = st.lists(
    st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b), min_size=1, max_size=4
)


@given(path_bytes)
def test_every_path_round_trips_through_its_key(parts: list[bytes]):
    path = b"/" + b"/".join(parts)
    key = key_for_path(path)
    assert path_for_key(key) == path
    key.encode("utf-8")  # always valid UTF-8 for S3


def test_plain_paths_keep_the_existing_scripts_keys():
    assert key_for_path(b"/srv/images/a b+c%d?#&'\".tif") == "srv/images/a b+c%d?#&'\".tif"
    assert key_for_path("/srv/caf\u00e9.tif".encode()) == "srv/caf\u00e9.tif"


def test_undecodable_and_control_names_take_the_escaped_form():
    assert key_for_path(b"/srv/caf\xe9.tif") == "/srv/caf%E9.tif"
    assert key_for_path(b"/srv/line\nbreak%.tif") == "/srv/line%0Abreak%25.tif"


def xml_char(ch: str) -> bool:
    """XML 1.0's Char production."""
    code = ord(ch)
    return code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or code >= 0x10000


@pytest.mark.parametrize(
    ("path", "key", "earlier"),
    [
        ("/srv/a\ufffe.tif".encode(), "/srv/a%EF%BF%BE.tif", "srv/a\ufffe.tif"),
        ("/srv/a\uffff%.tif".encode(), "/srv/a%EF%BF%BF%25.tif", "srv/a\uffff%.tif"),
        (b"/srv/\x01" + "\ufffe".encode(), "/srv/%01%EF%BF%BE", "/srv/%01\ufffe"),  # escaped before, U+FFFE raw
        (b"/srv/caf\xe9" + "\uffff".encode(), "/srv/caf%E9%EF%BF%BF", "/srv/caf%E9\uffff"),
        (b"/srv/\xed\xa0\x80.tif", "/srv/%ED%A0%80.tif", None),  # a surrogate's bytes: never UTF-8
        ("/srv/\ufdd0\U0010fffe.tif".encode(), "srv/\ufdd0\U0010fffe.tif", None),  # noncharacters XML allows
    ],
)
def test_names_outside_xml_take_the_escaped_form(path: bytes, key: str, earlier: str | None):
    assert key_for_path(path) == key
    assert all(xml_char(ch) for ch in key)
    assert path_for_key(key) == path
    assert superseded_key(path, key) == earlier


@given(st.lists(st.sampled_from(["a", "%", "\n", "\ufffe", "\uffff", "\ud7ff", "\ue000", "\U0001f4dc"]), max_size=8))
def test_every_key_is_xml(chars: list[str]):
    path = ("/x" + "".join(chars)).encode()
    key = key_for_path(path)
    assert all(xml_char(ch) for ch in key), key
    assert path_for_key(key) == path


def test_overlong_keys_are_refused():
    check_key_length("a" * MAX_KEY_BYTES)
    with pytest.raises(KeyTooLongError, match="1,024"):
        check_key_length("a" * (MAX_KEY_BYTES + 1))


@given(
    st.text(min_size=1, max_size=300).map(lambda t: "/" + t.replace("\0", "")),
    st.sampled_from(["", "backup-", "org-x-"]),
)
def test_stable_bucket_names_are_always_valid(path: str, prefix: str):
    assert bucket_name_problem(stable_bucket_name(prefix, os.path.normpath(path))) is None


def test_stable_names_depend_only_on_the_target_and_keep_similar_paths_apart():
    assert stable_bucket_name("backup-", "/srv/images/register-1900") == stable_bucket_name(
        "backup-", "/srv/images/register-1900"
    )
    assert stable_bucket_name("", "/a/b-c") != stable_bucket_name("", "/a/b/c")
    name = stable_bucket_name("backup-", "/srv/images/register-1900")
    assert (
        name.startswith("backup-srv-images-register-1900-") and len(name) == len("backup-srv-images-register-1900-") + 8
    )


def test_legacy_names_follow_the_old_rule():
    assert legacy_bucket_name("/data/images/Parish_A", "/data/images") == "images--parish-a"


def _config(tmp_path: Path, folders: list[object], roots: list[str] | None = None, **backup: object):
    raw = {"backup": {"folders": folders, "roots": roots or [], **backup}}
    return parse_config(raw, tmp_path / "config.json")


def test_adding_a_folder_renames_no_bucket(tmp_path: Path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    one = discover_targets(_config(tmp_path, [str(tmp_path / "a")]), {})
    two = discover_targets(_config(tmp_path, [str(tmp_path / "a"), str(tmp_path / "b")]), {})
    assert one[0].bucket == two[0].bucket


def test_pinned_bucket_and_collisions(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pinned = discover_targets(_config(tmp_path, [{"path": str(tmp_path / "a"), "bucket": "my-scans"}]), {})
    assert pinned[0].bucket == "my-scans"
    with pytest.raises(ConfigError, match="would both go to bucket same-one"):
        discover_targets(
            _config(
                tmp_path,
                [
                    {"path": str(tmp_path / "a"), "bucket": "same-one"},
                    {"path": str(tmp_path / "b"), "bucket": "same-one"},
                ],
            ),
            {},
        )
    with pytest.raises(ConfigError, match="Bad_Name"):
        discover_targets(_config(tmp_path, [{"path": str(tmp_path / "a"), "bucket": "Bad_Name"}]), {})


def test_roots_give_one_target_per_direct_subfolder(tmp_path: Path):
    for sub in ("root/x/deeper", "root/y"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "root/file.txt").write_text("not a target")
    targets = discover_targets(_config(tmp_path, [], [str(tmp_path / "root")]), {})
    assert [t.path for t in targets] == [str(tmp_path / "root/x"), str(tmp_path / "root/y")]
    gone = discover_targets(
        _config(tmp_path, [], [str(tmp_path / "root")]), {str(tmp_path / "root/z"): ("b-z", str(tmp_path / "root"))}
    )
    assert [t.missing for t in gone] == [False, False, True]


def test_a_missing_new_folder_or_root_is_a_missing_target_not_a_config_error(tmp_path: Path):
    (tmp_path / "a").mkdir()
    config = _config(tmp_path, [str(tmp_path / "a"), str(tmp_path / "typo")], [str(tmp_path / "unmounted")])
    targets = discover_targets(config, {})
    assert [(t.path, t.missing, t.missing_key) for t in targets] == [
        (str(tmp_path / "a"), False, None),
        (str(tmp_path / "typo"), True, "backup.folders[1]"),
        (str(tmp_path / "unmounted"), True, "backup.roots[0]"),
    ]
    assert targets[2].bucket == ""  # a root is no target of its own: it only stands for its unknown subfolders
    known = discover_targets(config, {str(tmp_path / "typo"): ("b-typo", None)})
    assert known[1].missing and known[1].missing_key is None  # backed up before: the usual "target missing"


def test_nested_targets_are_warned_about():
    from async_backup.settings.targets import Target

    warnings = nested_target_warnings([Target("/a", "b1"), Target("/a/b", "b2"), Target("/a-b", "b3")])
    assert warnings == ["target /a/b lies inside target /a: its files go to both buckets"]


def test_walk_order_is_the_byte_order_of_full_paths(tmp_path: Path):
    for rel in ("a/b", "a-c", "a.d/e", "b", "a/a/z", "\u00e9t\u00e9"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    entries = list(walk_target(os.fsencode(tmp_path), Excluder(()), lambda f: None, "t"))
    paths = [e.path for e in entries]
    assert paths == sorted(paths)
    assert all(isinstance(e, DiskFile) for e in entries) and len(paths) == 6


def test_config_folder_entries(tmp_path: Path):
    config = _config(tmp_path, ["/x/", {"path": "/y", "bucket": "b-y"}])
    assert config.folders == (FolderSpec("/x"), FolderSpec("/y", "b-y"))
