"""The streamed walk (gateway/walk.py): one order every time, resumable after
any path it gave, the same whether a folder's names are sorted in memory or
spilled in runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.paths import AllowedRoots
from gateway.walk import sorted_entries, walk_images
from imagesearch.errors import ServiceError


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, AllowedRoots]:
    root = tmp_path / "root"
    for rel in [
        "b.jpg",
        "a.png",
        "notes.txt",
        "a/z.jpg",
        "a/b/c.jpg",
        "a-b/x.jpg",  # '-' sorts before '/' would: components, not strings
        "ab.jpg",
        "deep/1/2/3/4.webp",
    ]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    bad = os.fsencode(str(root)) + b"/caf\xe9.jpg"  # not UTF-8
    with open(bad, "wb") as f:
        f.write(b"x")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "out.jpg")  # leaves the root: skipped
    os.symlink(root / "b.jpg", root / "in.jpg")  # stays inside: kept
    os.symlink(root / "a", root / "folder-link.jpg")  # a folder: skipped
    os.symlink(root / "a", root / "linked")  # folder symlinks are not entered
    return root, AllowedRoots([root])


def expected(root: Path, recursive: bool) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if not recursive:
            dirnames.clear()
        for name in filenames:
            path = os.path.join(dirpath, name)
            image = name.endswith((".jpg", ".png", ".webp")) and name != "out.jpg"
            if image and not os.path.isdir(path):
                found.append(path)
    return sorted(found, key=lambda p: os.path.relpath(p, root).split(os.sep))


@pytest.mark.parametrize("run", [2, 20_000])
def test_the_walk_gives_every_image_once_in_component_order(tree, run: int) -> None:
    root, roots = tree
    for recursive in (True, False):
        walked = list(walk_images(root, recursive, roots, run=run))
        assert walked == expected(root, recursive)
    names = [Path(p).name for p in walk_images(root, False, roots, run=run)]
    assert "out.jpg" not in names and "in.jpg" in names and "folder-link.jpg" not in names


@pytest.mark.parametrize("run", [3, 20_000])
def test_a_walk_resumed_after_any_path_gives_exactly_the_rest(tree, run: int) -> None:
    root, roots = tree
    full = list(walk_images(root, True, roots, run=run))
    assert len(full) == 9
    for k, last in enumerate(full):
        assert list(walk_images(root, True, roots, after=last, run=run)) == full[k + 1 :]


def test_a_large_folder_is_merged_from_sorted_runs(tmp_path: Path) -> None:
    names = [f"{n * 7919 % 1000:04d}.jpg" for n in range(1000)]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    entries = list(sorted_entries(str(tmp_path), run=64))  # 16 runs, 15 spilled
    assert [name for name, _ in entries] == sorted(names)


def test_a_sub_folder_that_cannot_be_read_is_skipped_and_the_folder_itself_is_not(
    tmp_path: Path,
) -> None:
    # Folders nested past PATH_MAX (4096): scandir cannot open the deep ones
    # by name (ENAMETOOLONG), whoever runs the test (root reads any mode).
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for _ in range(20):
            os.mkdir("d" * 250, dir_fd=fd)
            inner = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)
    (tmp_path / "open.jpg").write_bytes(b"x")
    found = list(walk_images(tmp_path, True, AllowedRoots([tmp_path])))
    assert found == [str(tmp_path / "open.jpg")]
    with pytest.raises(ServiceError):  # the folder itself: the job fails, saying why
        list(walk_images(tmp_path / "gone", True, AllowedRoots([tmp_path])))
