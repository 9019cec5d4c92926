"""TinyImageNet from a tiny zip in the official layout: labels, pixels, checks and the decoded cache."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import harness_plugins.datasets.tinyimagenet as tinyimagenet
from harness.data import Splits
from harness.errors import UsageError
from harness_plugins.datasets.tinyimagenet import TinyImageNet

# Not in alphabetical order: class i is the i-th line of wnids.txt, whatever the names.
WNIDS = ["n03000000", "n01000000", "n02000000"]
TRAIN_PER_CLASS = 3
# (file name, wnid) in the order of val_annotations.txt.
VAL = [("val_0.JPEG", "n02000000"), ("val_1.JPEG", "n03000000"), ("val_2.JPEG", "n01000000"), ("val_3.JPEG", "n02000000")]
GREY = ("n01000000", 1)  # this training image is a greyscale JPEG, as some official ones are
TOLERANCE = 3  # JPEG keeps a solid colour within a level or two


def colour(wnid: str, k: int, shift: int = 0) -> tuple[int, int, int]:
    """A distinct solid colour for each image."""
    c = WNIDS.index(wnid)
    return (40 + 60 * c + shift, 30 + 50 * k, 200 - 40 * c - 30 * k)


def grey(shift: int = 0) -> int:
    return 77 + shift


def jpeg(rgb: tuple[int, int, int] | int, size: tuple[int, int] = (64, 64)) -> bytes:
    mode = "L" if isinstance(rgb, int) else "RGB"
    out = io.BytesIO()
    Image.new(mode, size, rgb).save(out, format="JPEG", quality=95)
    return out.getvalue()


def write_zip(path: Path, *, shift: int = 0, val: list[tuple[str, str]] = VAL, odd: str | None = None) -> str:
    """The official layout, 3 classes; returns the zip's md5. ``odd``: a member written 32×32."""
    top = "tiny-imagenet-200"
    members: dict[str, bytes] = {f"{top}/wnids.txt": "".join(f"{w}\n" for w in WNIDS).encode()}
    members[f"{top}/words.txt"] = b"".join(f"{w}\tthing {i}\n".encode() for i, w in enumerate(WNIDS))
    for wnid in WNIDS:
        members[f"{top}/train/{wnid}/images/"] = b""
        members[f"{top}/train/{wnid}/{wnid}_boxes.txt"] = b"".join(
            f"{wnid}_{k}.JPEG\t0\t0\t63\t63\n".encode() for k in range(TRAIN_PER_CLASS)
        )
        for k in range(TRAIN_PER_CLASS):
            value = grey(shift) if (wnid, k) == GREY else colour(wnid, k, shift)
            members[f"{top}/train/{wnid}/images/{wnid}_{k}.JPEG"] = jpeg(value)
    members[f"{top}/val/val_annotations.txt"] = "".join(f"{name}\t{wnid}\t0\t1\t62\t63\n" for name, wnid in val).encode()
    for i, (name, _) in enumerate(VAL):
        members[f"{top}/val/images/{name}"] = jpeg((10 * i + shift, 100, 250 - 10 * i))
    members[f"{top}/test/images/test_0.JPEG"] = jpeg((1, 2, 3))  # unlabelled: never read
    if odd:
        members[odd] = jpeg((5, 5, 5), size=(32, 32))
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return hashlib.md5(path.read_bytes()).hexdigest()


def tiny(md5: str) -> type[TinyImageNet]:
    class TinyTinyImageNet(TinyImageNet):
        info = dataclasses.replace(TinyImageNet.info, num_classes=len(WNIDS))

    TinyTinyImageNet.md5 = md5
    return TinyTinyImageNet


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "tinyimagenet" / "tiny-imagenet-200.zip"


def assert_close(image: torch.Tensor, rgb: tuple[int, int, int]) -> None:
    expected = torch.tensor(rgb, dtype=torch.int16).view(3, 1, 1)
    assert int((image.to(torch.int16) - expected).abs().max()) <= TOLERANCE, (image[:, 0, 0].tolist(), rgb)


def check(splits: Splits, shift: int = 0) -> None:
    n = len(WNIDS) * TRAIN_PER_CLASS
    assert splits.train_images.shape == (n, 3, 64, 64) and splits.train_images.dtype == torch.uint8
    assert splits.test_images.shape == (len(VAL), 3, 64, 64) and splits.test_images.dtype == torch.uint8
    assert splits.train_labels.dtype == splits.test_labels.dtype == torch.int64
    assert splits.train_labels.tolist() == [c for c in range(len(WNIDS)) for _ in range(TRAIN_PER_CLASS)]
    assert splits.test_labels.tolist() == [WNIDS.index(wnid) for _, wnid in VAL]
    for i, label in enumerate(splits.train_labels.tolist()):
        wnid, k = WNIDS[label], i % TRAIN_PER_CLASS
        value = (grey(shift),) * 3 if (wnid, k) == GREY else colour(wnid, k, shift)
        assert_close(splits.train_images[i], value)
    for i in range(len(VAL)):
        assert_close(splits.test_images[i], (10 * i + shift, 100, 250 - 10 * i))


def test_metadata() -> None:
    TinyImageNet.validate_class()
    assert TinyImageNet.info.name == TinyImageNet.name == "tinyimagenet"
    assert TinyImageNet.info.num_classes == 200 and TinyImageNet.info.shape == (3, 64, 64)
    assert TinyImageNet.info.mean == (0.4802, 0.4481, 0.3975) and TinyImageNet.info.std == 0.2276
    assert TinyImageNet.source is not None and TinyImageNet.source.url


def test_registered(catalog, harness_cli) -> None:
    assert "tinyimagenet" in catalog.names("dataset")
    result = harness_cli("plugins")
    assert result.code == 0 and re.search(r"dataset +tinyimagenet ", result.out)


def test_loads_the_official_layout(archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    splits = tiny(write_zip(archive))().load(tmp_path, download=False)
    check(splits)
    grey_image = splits.train_images[WNIDS.index(GREY[0]) * TRAIN_PER_CLASS + GREY[1]]
    assert torch.equal(grey_image[0], grey_image[1]) and torch.equal(grey_image[1], grey_image[2])
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in archive.parent.iterdir()) == ["tiny-imagenet-200.decoded.pt", "tiny-imagenet-200.zip"]


def test_the_second_load_comes_from_the_cache(archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = tiny(write_zip(archive))
    first = cls().load(tmp_path, download=False)

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded the zip again instead of reading the cache")

    monkeypatch.setattr(TinyImageNet, "_read_zip", no_decoding)
    second = cls().load(tmp_path, download=False)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(first, name), getattr(second, name))


def test_a_changed_zip_rebuilds_the_cache(archive: Path, tmp_path: Path) -> None:
    check(tiny(write_zip(archive))().load(tmp_path, download=False))
    cls = tiny(write_zip(archive, shift=20))
    check(cls().load(tmp_path, download=False), shift=20)
    check(cls().load(tmp_path, download=False), shift=20)  # and the new cache is the new zip's


@pytest.mark.parametrize("garbage", [b"", b"not a torch file", "pickle"])
def test_a_corrupt_cache_is_rebuilt(archive: Path, tmp_path: Path, garbage: bytes | str) -> None:
    cls = tiny(write_zip(archive))
    cache = archive.with_name("tiny-imagenet-200.decoded.pt")
    if garbage == "pickle":  # the right key, the wrong contents
        torch.save({"format": tinyimagenet.CACHE_FORMAT, "md5": cls.md5, "train_images": torch.zeros(1)}, cache)
    else:
        cache.write_bytes(garbage)
    check(cls().load(tmp_path, download=False))
    assert torch.load(cache, weights_only=True)["md5"] == cls.md5


def test_an_unwritable_cache_is_skipped(archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(tinyimagenet.tempfile, "mkstemp", refuse)
    check(tiny(write_zip(archive))().load(tmp_path, download=False))
    assert [p.name for p in archive.parent.iterdir()] == ["tiny-imagenet-200.zip"]


def test_the_wrong_md5_is_a_one_line_usage_error(archive: Path, tmp_path: Path) -> None:
    write_zip(archive)
    with pytest.raises(UsageError) as error:
        TinyImageNet().load(tmp_path, download=False)
    message = str(error.value)
    assert "\n" not in message
    assert f"checksum mismatch for {archive}: expected md5 {TinyImageNet.md5}" in message
    assert TinyImageNet.url in message
    assert not archive.with_name("tiny-imagenet-200.decoded.pt").exists()


def test_a_missing_zip_names_the_file_and_the_url(archive: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as error:
        TinyImageNet().load(tmp_path, download=False)
    message = str(error.value)
    assert "\n" not in message
    assert f"missing data file {archive}" in message
    assert "http://cs231n.stanford.edu/tiny-imagenet-200.zip" in message
    assert not archive.parent.exists()


def test_an_image_that_is_not_64x64_is_rejected(archive: Path, tmp_path: Path) -> None:
    member = f"tiny-imagenet-200/train/{WNIDS[2]}/images/{WNIDS[2]}_9.JPEG"
    cls = tiny(write_zip(archive, odd=member))
    with pytest.raises(UsageError, match=f"malformed data file .*: {re.escape(member)} is 32×32, expected 64×64$"):
        cls().load(tmp_path, download=False)


def test_a_val_row_with_an_unknown_wnid_is_rejected(archive: Path, tmp_path: Path) -> None:
    cls = tiny(write_zip(archive, val=[*VAL[:2], ("val_2.JPEG", "n09999999")]))
    with pytest.raises(UsageError) as error:
        cls().load(tmp_path, download=False)
    message = str(error.value)
    assert "\n" not in message
    assert "tiny-imagenet-200/val/val_annotations.txt" in message and "n09999999" in message


def test_a_corrupt_zip_is_a_usage_error(archive: Path, tmp_path: Path) -> None:
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"<html>Not Found</html>")
    with pytest.raises(UsageError, match=f"corrupt data file {re.escape(str(archive))}: .*{re.escape(TinyImageNet.url)}"):
        tiny(hashlib.md5(archive.read_bytes()).hexdigest())().load(tmp_path, download=False)
