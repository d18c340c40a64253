"""ObjectStore on a local directory and on a real S3 endpoint (SeaweedFS on loopback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from videolib.storage import ObjectStore, UnsafeKeyError, validate_key


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """An empty store: a temp directory, or a fresh prefix in the test bucket."""
    if request.param == "local":
        return ObjectStore.from_url(str(tmp_path / "root"))
    server = request.getfixturevalue("s3_server")
    return ObjectStore.from_url(request.getfixturevalue("s3_prefix"), endpoint_url=server.endpoint_url)


@pytest.fixture
def local_store(tmp_path: Path) -> ObjectStore:
    return ObjectStore.from_url(str(tmp_path / "root"))


@pytest.fixture
def s3_store(s3_server, s3_prefix: str) -> ObjectStore:
    return ObjectStore.from_url(s3_prefix, endpoint_url=s3_server.endpoint_url)


def video_keys(n: int, *, creators: int = 3) -> list[str]:
    return [f"videos/c{i % creators}/v{i:05d}/source.mp4" for i in range(n)]


# --------------------------------------------------------------------------- construction


def test_from_url_local_relative_and_file_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = ObjectStore.from_url(".data/storage")
    assert store.root == str((tmp_path / ".data/storage").resolve())
    assert os.path.isdir(store.root)
    assert store.url == ".data/storage"
    assert not store.is_s3

    other = ObjectStore.from_url(f"file://{tmp_path}/x")
    assert other.root == str((tmp_path / "x").resolve())
    other.put("k", b"1")
    assert (tmp_path / "x" / "k").read_bytes() == b"1"


def test_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from config.settings import Settings

    store = ObjectStore.from_settings(Settings(storage_url=str(tmp_path / "s")))
    assert store.root == str((tmp_path / "s").resolve())


def test_from_url_s3(s3_server, s3_prefix: str) -> None:
    store = ObjectStore.from_url(s3_prefix + "/", endpoint_url=s3_server.endpoint_url)
    assert store.is_s3
    assert store.url == s3_prefix + "/"
    assert store.root == s3_prefix.removeprefix("s3://")
    assert store.path("a/b") == f"{store.root}/a/b"


# --------------------------------------------------------------------------- basics


def test_put_get_exists_size(store: ObjectStore) -> None:
    key = "videos/c1/v1/source.mp4"
    assert not store.exists(key)
    assert store.size(key) is None
    store.put(key, b"hello")
    assert store.get(key) == b"hello"
    assert store.exists(key)
    assert store.size(key) == 5
    store.put(key, b"hi")  # replaces
    assert store.get(key) == b"hi"
    # A "directory" is not an object.
    assert not store.exists("videos/c1")
    assert store.size("videos/c1/v1") is None
    with pytest.raises(FileNotFoundError):
        store.get("videos/c1/v1/missing.mp4")


def test_sizes(store: ObjectStore) -> None:
    store.put_many({"a/1": b"1", "a/22": b"22", "b/333": b"333"})
    sizes = store.sizes(["a/1", "a/22", "b/333", "nope/x", "a/1"])
    assert sizes == {"a/1": 1, "a/22": 2, "b/333": 3, "nope/x": None}
    assert store.sizes([]) == {}


def test_put_many_and_list_keys(store: ObjectStore) -> None:
    items = {key: key.encode() for key in video_keys(120)}
    store.put_many(items, max_in_flight=8)
    assert store.list_keys("videos") == sorted(items)
    assert store.list_keys("videos/c1") == sorted(k for k in items if k.startswith("videos/c1/"))
    assert store.list_keys("videos/c1/") == store.list_keys("videos/c1")
    assert store.list_keys("videos/c") == []  # a prefix is a path, not a string prefix
    assert store.get("videos/c2/v00005/source.mp4") == b"videos/c2/v00005/source.mp4"
    store.put_many({})


def test_open_streams(store: ObjectStore) -> None:
    with store.open("exports/c1/op.csv", "wb") as fh:
        for i in range(1000):
            fh.write(b"%d,row\n" % i)
    assert store.size("exports/c1/op.csv") == sum(len(b"%d,row\n" % i) for i in range(1000))
    with store.open("exports/c1/op.csv") as fh:
        assert fh.readline() == b"0,row\n"


# --------------------------------------------------------------------------- deletes


def test_delete_many_counts_missing_as_deleted(store: ObjectStore) -> None:
    keys = video_keys(30)
    store.put_many({key: b"x" for key in keys})
    store.put("videos/keep/v/source.mp4", b"keep")
    missing = ["videos/c9/nope/source.mp4", "never/was/here"]
    assert store.delete_many(keys + missing + keys[:5]) == {}
    assert store.list_keys("") == ["videos/keep/v/source.mp4"]
    # Idempotent: deleting again is still a success.
    assert store.delete_many(keys) == {}
    assert store.delete_many([]) == {}


def test_delete_single(store: ObjectStore) -> None:
    store.put("a/b", b"1")
    store.delete("a/b")
    assert not store.exists("a/b")
    store.delete("a/b")  # missing is fine


def test_local_delete_removes_empty_parents(local_store: ObjectStore) -> None:
    root = Path(local_store.root)
    local_store.put_many({
        "videos/c1/v1/source.mp4": b"1",
        "videos/c1/v1/thumbnail.jpg": b"2",
        "videos/c1/v2/source.mp4": b"3",
        "videos/c2/v3/source.mp4": b"4",
    })
    assert local_store.delete_many(["videos/c1/v1/source.mp4"]) == {}
    assert (root / "videos/c1/v1").is_dir()  # still holds the thumbnail
    assert local_store.delete_many(["videos/c1/v1/thumbnail.jpg", "videos/c2/v3/source.mp4"]) == {}
    assert not (root / "videos/c1/v1").exists()
    assert not (root / "videos/c2").exists()
    assert (root / "videos/c1/v2").is_dir()
    assert local_store.delete_many(["videos/c1/v2/source.mp4"]) == {}
    assert not (root / "videos").exists()
    assert root.is_dir()  # the root itself stays


def test_local_delete_reports_per_key_errors(local_store: ObjectStore) -> None:
    # A key naming a directory is not an object: reported, not silently "deleted".
    local_store.put("videos/c1/v1/source.mp4", b"1")
    local_store.put("other/file", b"2")
    errors = local_store.delete_many(["videos/c1/v1", "other/file"])
    assert list(errors) == ["videos/c1/v1"]
    assert "directory" in errors["videos/c1/v1"]
    assert local_store.exists("videos/c1/v1/source.mp4")
    assert not local_store.exists("other/file")
    with pytest.raises(OSError, match="directory"):
        local_store.delete("videos/c1/v1")


@pytest.mark.s3
def test_s3_delete_many_over_1000_keys(s3_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = video_keys(2100, creators=7)
    s3_store.put_many({key: b"x" for key in keys}, max_in_flight=64)
    assert s3_store.size(keys[-1]) == 1

    # Observe (not replace) the requests s3fs sends, to see the split into <= 1000 keys.
    calls: list[int] = []
    real_call = s3_store.fs._call_s3

    async def counting_call(method, *args, **kwargs):
        if method == "delete_objects":
            calls.append(len(kwargs["Delete"]["Objects"]))
        return await real_call(method, *args, **kwargs)

    monkeypatch.setattr(s3_store.fs, "_call_s3", counting_call)
    assert s3_store.delete_many(keys + ["videos/c1/missing/source.mp4"], max_in_flight=2) == {}
    monkeypatch.undo()
    assert sorted(calls) == [101, 1000, 1000]
    assert s3_store.list_keys("videos") == []
    assert s3_store.sizes(keys[:50]) == dict.fromkeys(keys[:50])


@pytest.mark.s3
def test_s3_delete_whole_request_failure_reported(s3_server) -> None:
    # A real whole-request failure: SeaweedFS answers DeleteObjects on a bucket that
    # does not exist with NoSuchBucket (HTTP 404), which s3fs turns into a
    # FileNotFoundError. That must not read as "already gone": every key of the
    # request is reported.
    store = ObjectStore.from_url("s3://no-such-bucket-bulkops/p", endpoint_url=s3_server.endpoint_url)
    keys = video_keys(1200)
    errors = store.delete_many(keys)
    assert set(errors) == set(keys)
    assert all("bucket does not exist" in message for message in errors.values())
    with pytest.raises(OSError, match="bucket does not exist"):
        store.delete("a/b")


@pytest.mark.s3
def test_s3_delete_per_key_errors_reported(s3_store: ObjectStore) -> None:
    # What makes a real SeaweedFS (4.48) DeleteObjects fail per key, found by trying:
    # a key with a "." or ".." segment, or with backslashes next to dots ("a/./",
    # "a/..", "..\\x") comes back in the response's Errors as InvalidRequest, even in
    # Quiet mode, while the rest of the request succeeds. Everything else tried is
    # reported as deleted: missing keys, keys of 1100 bytes, keys naming a non-empty
    # "directory" (which stays), objects under legal hold or COMPLIANCE retention in
    # an object-lock bucket (a delete marker is added, as on AWS) and a bucket policy
    # denying s3:DeleteObject (not enforced without configured identities).
    # validate_key refuses exactly the keys that fail, so the public API cannot send
    # one; this drives the request layer underneath delete_many with raw keys.
    keys = video_keys(200)
    s3_store.put_many({key: b"x" for key in keys}, max_in_flight=64)
    prefix = s3_store._key_prefix
    bad = [f"{prefix}videos/../escape", f"{prefix}videos/./x"]
    missing = [f"{prefix}missing/{i}" for i in range(1000)]
    # Two requests (1000 + 202 keys), one bad key in each, existing objects in both.
    raw = [f"{prefix}{key}" for key in keys[:100]] + [bad[0]] + missing + [bad[1]] + [f"{prefix}{key}" for key in keys[100:]]
    errors = s3_store._run(s3_store._s3_delete_objects, raw, 4)
    assert set(errors) == set(bad)
    assert all(message.startswith("InvalidRequest") for message in errors.values())
    assert s3_store.list_keys("videos") == []


def test_delete_many_rate_local(local_store: ObjectStore) -> None:
    # Smoke-size: the realistic layout (one directory per video) is what costs.
    keys = [f"videos/c{i % 5}/v{i:05d}/{name}" for i in range(500) for name in ("source.mp4", "thumbnail.jpg")]
    local_store.put_many({key: b"x" for key in keys})
    import time

    started = time.perf_counter()
    assert local_store.delete_many(keys) == {}
    elapsed = time.perf_counter() - started
    assert local_store.list_keys("") == []
    assert not os.listdir(local_store.root)
    assert len(keys) / elapsed > 500, f"{len(keys) / elapsed:.0f} files/s"


def test_other_fsspec_filesystem() -> None:
    # Any fsspec filesystem works through the generic calls (here: in-memory).
    import fsspec

    store = ObjectStore(fsspec.filesystem("memory"), f"/bulk-{os.getpid()}-{id(object())}")
    store.put_many({"a/1": b"1", "a/2": b"22"})
    store.put("b/3", b"333")
    assert store.get("a/2") == b"22"
    assert store.sizes(["a/1", "a/2", "zz"]) == {"a/1": 1, "a/2": 2, "zz": None}
    assert store.list_keys("") == ["a/1", "a/2", "b/3"]
    assert store.delete_many(["a/1", "missing"]) == {}
    assert store.list_keys("a") == ["a/2"]
    with pytest.raises(UnsafeKeyError):
        store.get("../x")


def test_local_put_is_atomic_and_leaves_no_temp_files(local_store: ObjectStore) -> None:
    local_store.put("a/b", b"1" * 10_000)
    local_store.put("a/b", b"2")
    assert sorted(os.listdir(Path(local_store.root) / "a")) == ["b"]
    assert local_store.get("a/b") == b"2"


# --------------------------------------------------------------------------- unsafe keys

BAD_KEYS = [
    "../x",
    "/etc/passwd",
    "a/../../b",
    "a/..",
    "..",
    ".",
    "./a",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "..\\x",
    "a\x00b",
    "a\nb",
    "a\x7fb",
    "",
    "~root/x",
    "s3://other/x",
    "file:///etc/passwd",
    "file:x",
    "C:/x",
    "a/s3://b",
    "x" * 1025,
    "a\ud800b",
    None,
    b"bytes",
    42,
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=lambda k: repr(k)[:30])
def test_validate_key_refuses(key) -> None:
    with pytest.raises(UnsafeKeyError):
        validate_key(key)


@pytest.mark.parametrize(
    "key",
    ["a", "videos/c1/v1/source.mp4", "exports/c_1/op-1.parquet", "a b/ä ö", "videos/auth0|x:y/v", "a/.hidden", "a/...", "x" * 1024],
)
def test_validate_key_accepts(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "a//b", "a\\b", "a\x00b", "", ".", "s3://other/x"])
def test_unsafe_keys_touch_nothing(store: ObjectStore, key: str, tmp_path: Path) -> None:
    store.put("good", b"1")
    sentinel = tmp_path / "passwd"
    sentinel.write_bytes(b"secret")
    calls = [
        lambda: store.path(key),
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.size(key),
        lambda: store.open(key, "wb"),
        lambda: store.delete(key),
        lambda: store.list_keys(key) if key not in ("", "/") else (_ for _ in ()).throw(UnsafeKeyError()),
        # All keys are checked before any is touched.
        lambda: store.put_many({"new": b"x", key: b"x"}),
        lambda: store.sizes(["good", key]),
        lambda: store.delete_many(["good", key]),
    ]
    for call in calls:
        with pytest.raises(UnsafeKeyError):
            call()
    assert store.get("good") == b"1"
    assert not store.exists("new")
    assert sentinel.read_bytes() == b"secret"
    assert store.list_keys("") == ["good"]


def test_keys_must_be_an_iterable_of_keys(store: ObjectStore) -> None:
    with pytest.raises(TypeError):
        store.delete_many("videos/c1/v1/source.mp4")
    with pytest.raises(ValueError, match="max_in_flight"):
        store.delete_many(["a"], max_in_flight=0)


# --------------------------------------------------------------------------- symlinks (local)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside"
    target.mkdir()
    (target / "secret").write_bytes(b"secret")
    return target


def test_symlinked_directory_escape_refused(local_store: ObjectStore, outside: Path) -> None:
    root = Path(local_store.root)
    (root / "videos").mkdir()
    (root / "videos" / "c1").symlink_to(outside, target_is_directory=True)
    local_store.put("videos/c2/v/source.mp4", b"ok")
    key = "videos/c1/secret"
    for call in (
        lambda: local_store.get(key),
        lambda: local_store.put(key, b"x"),
        lambda: local_store.put("videos/c1/new", b"x"),
        lambda: local_store.put_many({"videos/c1/new": b"x"}),
        lambda: local_store.exists(key),
        lambda: local_store.size(key),
        lambda: local_store.sizes([key]),
        lambda: local_store.open(key),
        lambda: local_store.path(key),
        lambda: local_store.delete(key),
        lambda: local_store.delete_many(["videos/c2/v/source.mp4", key]),
        lambda: local_store.list_keys("videos/c1"),
    ):
        with pytest.raises(UnsafeKeyError):
            call()
    assert (outside / "secret").read_bytes() == b"secret"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert local_store.get("videos/c2/v/source.mp4") == b"ok"  # the batch touched nothing


def test_symlinked_file_escape(local_store: ObjectStore, outside: Path) -> None:
    root = Path(local_store.root)
    (root / "a").mkdir()
    (root / "a" / "link").symlink_to(outside / "secret")
    for call in (
        lambda: local_store.get("a/link"),
        lambda: local_store.put("a/link", b"x"),
        lambda: local_store.size("a/link"),
        lambda: local_store.sizes(["a/link"]),
        lambda: local_store.open("a/link", "wb"),
    ):
        with pytest.raises(UnsafeKeyError):
            call()
    # Deleting a symlink removes the link, never its target: allowed.
    assert local_store.delete_many(["a/link"]) == {}
    assert not (root / "a" / "link").is_symlink()
    assert (outside / "secret").read_bytes() == b"secret"


def test_symlink_inside_root_is_fine(local_store: ObjectStore) -> None:
    root = Path(local_store.root)
    local_store.put("real/x", b"1")
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    assert local_store.get("alias/x") == b"1"
    assert local_store.sizes(["alias/x"]) == {"alias/x": 1}


def test_root_behind_a_symlink(tmp_path: Path) -> None:
    # The root itself may be reached through a symlink (e.g. /tmp -> /private/tmp).
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real, target_is_directory=True)
    store = ObjectStore.from_url(str(tmp_path / "via"))
    store.put("a/b", b"1")
    assert (real / "a" / "b").read_bytes() == b"1"
    assert store.delete_many(["a/b"]) == {}
    assert not (real / "a").exists()


def test_cached_real_dirs_resolve_exactly_as_realpath(tmp_path):
    """Bulk calls resolve a video folder from its cached parent plus its name (one lstat):
    the result must equal os.path.realpath for plain folders, missing ones, symlinked
    folders and symlinked ancestors alike."""
    import os

    from videolib.storage import ObjectStore

    root = tmp_path / "root"
    (root / "videos" / "c1" / "v1").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "videos" / "c1" / "v2")
    os.symlink(root / "videos", tmp_path / "alias")
    os.symlink(tmp_path / "gone", root / "videos" / "c1" / "dangling")
    store = ObjectStore.from_url(str(root))
    cache: dict[str, str] = {}
    for path in (root / "videos/c1/v1", root / "videos/c1/v2", root / "videos/c1/missing",
                 root / "videos/c1/dangling", tmp_path / "alias/c1/v1", tmp_path / "alias/c1/v2",
                 root / "videos/c1/../c1/v1", root / "videos/c1/missing/deeper"):
        assert store._real_dir(str(path), cache) == os.path.realpath(path), path


def test_prefix_groups_cover_neighbours_with_few_listings():
    """How the S3 read-back groups keys: one video is its own folder; a run of
    neighbouring video folders a few dozen prefixes, every key under its own group's."""
    from videolib.storage.s3 import prefix_groups

    one = ["videos/c/0f1e/thumb.jpg", "videos/c/0f1e/video.mp4"]
    assert prefix_groups(one) == {"videos/c/0f1e/": one}
    ids = [f"{n:04x}" for n in range(0, 0x1000, 3)]  # 1366 videos spread over the id space
    keys = sorted(f"videos/c/{vid}/{name}" for vid in ids for name in ("thumb.jpg", "video.mp4"))
    groups = prefix_groups(keys)
    assert 1 < len(groups) <= len(keys) // 8
    assert sorted(key for members in groups.values() for key in members) == keys
    assert all(key.startswith(prefix) for prefix, members in groups.items() for key in members)
    assert prefix_groups([]) == {}
