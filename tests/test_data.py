import numpy as np
import pytest
import torch
from PIL import Image

from akd.data.preprocessing import Preprocessing, SampleDataset, collate, transforms_for
from akd.data.sources import Sample, discover
from akd.train.distributed import shard_indices
from akd.util import AkdError

from conftest import IMAGENET_SAMPLE


def _image(path, size=24, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)


def test_imagefolder_layout(imagefolder):
    found = discover(str(imagefolder))
    assert found.layout == "imagefolder" and found.classes == [f"class_{i}" for i in range(4)]
    assert len(found.samples) == 16 and sorted({s.label for s in found.samples}) == [0, 1, 2, 3]


def test_flat_folder_is_unlabeled(flat_folder):
    found = discover(str(flat_folder))
    assert found.layout == "flat" and found.classes is None
    assert {s.label for s in found.samples} == {-1}


def test_imagenet_sample_layout_labels_from_wnid(tmp_path):
    _image(tmp_path / "n01443537_goldfish.JPEG")
    _image(tmp_path / "n01440764_tench.JPEG")
    found = discover(str(tmp_path))
    assert found.layout == "imagenet-sample" and len(found.classes) == 1000
    assert {s.path.rsplit("/", 1)[1]: s.label for s in found.samples} == {
        "n01440764_tench.JPEG": 0, "n01443537_goldfish.JPEG": 1}


@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason="needs ../shared/data/imagenet-sample")
def test_shared_imagenet_sample():
    found = discover(str(IMAGENET_SAMPLE))
    assert found.layout == "imagenet-sample" and len(found.samples) == 800 and found.skipped == 0
    assert len({s.label for s in found.samples}) == 800


def test_cub_layout_and_split(tmp_path):
    root = tmp_path / "CUB_200_2011"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    rows = [("1", "001.Black_footed_Albatross/a.jpg", "1", "1"), ("2", "002.Laysan_Albatross/b.jpg", "2", "0"),
            ("3", "002.Laysan_Albatross/c.jpg", "2", "1")]
    (root / "images.txt").write_text("".join(f"{i} {p}\n" for i, p, _, _ in rows))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, _ in rows))
    (root / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t in rows))
    for _, p, _, _ in rows:
        _image(root / "images" / p)
    train, test = discover(str(tmp_path), "train"), discover(str(tmp_path), "test")
    assert train.layout == "cub-200-2011" and len(train.classes) == 2
    assert sorted(s.label for s in train.samples) == [0, 1] and [s.label for s in test.samples] == [1]


@pytest.mark.parametrize("level,expected", [("variant", [0, 1]), ("family", [0, 0]), ("manufacturer", [0, 0])])
def test_aircraft_layout_levels(tmp_path, level, expected):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("707-320\n727-200\n")
    (data / "families.txt").write_text("Boeing 707\nBoeing 727\n")
    (data / "manufacturers.txt").write_text("Boeing\n")
    (data / "images_variant_trainval.txt").write_text("0001 707-320\n0002 727-200\n")
    (data / "images_family_trainval.txt").write_text("0001 Boeing 707\n0002 Boeing 707\n")
    (data / "images_manufacturer_trainval.txt").write_text("0001 Boeing\n0002 Boeing\n")
    for name in ("0001", "0002"):
        _image(data / "images" / f"{name}.jpg")
    found = discover(str(tmp_path), "train", aircraft_level=level)
    assert found.layout == f"fgvc-aircraft-{level}" and [s.label for s in found.samples] == expected


def test_stanford_cars_layout(tmp_path):
    from scipy.io import savemat

    (tmp_path / "devkit").mkdir()
    savemat(tmp_path / "devkit" / "cars_meta.mat", {"class_names": np.array(["AM General Hummer", "Acura RL"],
                                                                            dtype=object)})
    annotations = np.array([("00001.jpg", 2), ("00002.jpg", 1)], dtype=[("fname", object), ("class", np.uint8)])
    savemat(tmp_path / "devkit" / "cars_train_annos.mat", {"annotations": annotations})
    for name in ("00001.jpg", "00002.jpg"):
        _image(tmp_path / "cars_train" / name)
    found = discover(str(tmp_path), "train")
    assert found.layout == "stanford-cars" and found.classes == ["AM General Hummer", "Acura RL"]
    assert [s.label for s in found.samples] == [1, 0]


def _write_video(path, frames=12, size=32):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (size, size))
    for index in range(frames):
        writer.write(np.full((size, size, 3), index * 20, dtype=np.uint8))
    writer.release()


def test_video_file_is_a_source_of_frames(tmp_path):
    video = tmp_path / "clip.avi"
    _write_video(video)
    found = discover(str(video), video_stride=4)
    assert found.layout == "video" and [s.frame for s in found.samples] == [0, 4, 8]
    dataset = SampleDataset(found.samples, transforms_for(Preprocessing(input_size=16), train=False))
    images, labels, skipped = collate([dataset[i] for i in range(3)])
    assert images.shape == (3, 3, 16, 16) and labels.tolist() == [-1, -1, -1] and skipped == 0


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    _image(tmp_path / "good.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "broken.avi").write_bytes(b"not a video")
    found = discover(str(tmp_path))
    assert [s.path.rsplit("/", 1)[1] for s in found.samples] == ["good.png"] and found.skipped == 3


def test_image_that_fails_to_decode_is_dropped_from_batch(tmp_path):
    good, truncated = tmp_path / "good.png", tmp_path / "truncated.jpg"
    _image(good)
    Image.new("RGB", (64, 64), (10, 200, 30)).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:300])  # header fine, data missing
    dataset = SampleDataset([Sample(str(good)), Sample(str(truncated))],
                                  transforms_for(Preprocessing(input_size=16), train=False))
    images, _, skipped = collate([dataset[0], dataset[1]])
    assert images.shape[0] == 1 and skipped == 1


def test_missing_and_empty_folders_are_errors(tmp_path):
    with pytest.raises(AkdError, match="not found"):
        discover(str(tmp_path / "nope"))
    with pytest.raises(AkdError, match="no readable images"):
        discover(str(tmp_path))


def test_augmentation_is_seeded_per_sample_and_epoch(imagefolder):
    samples = discover(str(imagefolder)).samples
    dataset = SampleDataset(samples, transforms_for(Preprocessing(input_size=24), train=True), seed=3)
    first = dataset[5][0]
    torch.manual_seed(999)  # global RNG state must not matter
    assert torch.equal(dataset[5][0], first)
    dataset.epoch = 1
    assert not torch.equal(dataset[5][0], first)


def test_shard_indices_cover_the_epoch_like_distributed_sampler():
    shards = [shard_indices(10, epoch=2, seed=0, rank=r, world=3, shuffle=True) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert set().union(*shards) == set(range(10))
    assert shard_indices(10, 2, 0, 0, 1, True) != shard_indices(10, 3, 0, 0, 1, True)

