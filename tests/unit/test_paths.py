"""Allowed roots against swaps and tricks, on a real file system."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from gateway.paths import AllowedRoots
from gateway.walk import walk_images
from imagesearch import errors

ANY_SIZE = (lambda _size: None, 1 << 20)  # check_size, max_bytes: nothing here is large


@pytest.fixture
def tree(tmp_path: Path) -> tuple[AllowedRoots, Path, Path]:
    root = tmp_path / "root"
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "a.jpg").write_bytes(b"inside")
    secret = tmp_path / "secret" / "photos"
    secret.mkdir(parents=True)
    (secret / "a.jpg").write_bytes(b"outside")
    return AllowedRoots([root]), root, secret


def swap_for_symlink(folder: Path, target: Path) -> None:
    folder.rename(folder.with_name(folder.name + ".old"))
    folder.symlink_to(target, target_is_directory=True)


def code(fn) -> grpc.StatusCode:
    with pytest.raises(errors.ServiceError) as info:
        fn()
    return info.value.code


def test_a_folder_swapped_for_a_symlink_between_walk_and_read_is_refused(tree) -> None:
    roots, root, secret = tree
    (found,) = list(walk_images(root / "photos", True, roots))
    swap_for_symlink(root / "photos", secret)
    assert code(lambda: roots.read(str(found), *ANY_SIZE)) == grpc.StatusCode.PERMISSION_DENIED


def test_a_swap_between_the_check_and_the_read_is_refused(tree) -> None:
    roots, root, secret = tree
    checked = roots.resolve(str(root / "photos" / "a.jpg"))  # what the servicer does first
    swap_for_symlink(root / "photos", secret)
    assert code(lambda: roots.read(str(checked), *ANY_SIZE)) == grpc.StatusCode.PERMISSION_DENIED


def test_symlinks_that_stay_inside_are_read(tree) -> None:
    roots, root, _ = tree
    (root / "link.jpg").symlink_to(root / "photos" / "a.jpg")
    assert roots.read(str(root / "link.jpg"), *ANY_SIZE) == b"inside"


def test_size_is_checked_before_reading_and_fifos_do_not_hang(tree) -> None:
    roots, root, _ = tree

    def too_big(size: int) -> None:
        raise errors.invalid_argument(f"{size} bytes is too large")

    assert code(lambda: roots.read(str(root / "photos" / "a.jpg"), too_big, 1)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    os.mkfifo(root / "pipe.jpg")
    assert (
        code(lambda: roots.read(str(root / "pipe.jpg"), *ANY_SIZE))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_messages_do_not_show_the_roots_or_expand_users(tree) -> None:
    roots, root, secret = tree
    with pytest.raises(errors.ServiceError) as info:
        roots.resolve(str(secret / "a.jpg"))
    assert str(root) not in info.value.message
    for raw in ("~root/.ssh/id_rsa", "~nosuchuser/x.jpg", "~/x.jpg"):
        with pytest.raises(errors.ServiceError) as info:
            roots.resolve(raw)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "'~' is not expanded" in info.value.message
