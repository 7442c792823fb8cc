import pickle
import struct
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from diffuse_cli.data import DATASETS, DataError, ImageFolder, build_dataset, random_hflip
from diffuse_cli.data.shapes import CLASS_NAMES


def stack(dataset, n=None):
    items = [dataset[i] for i in range(n or len(dataset))]
    return torch.stack([x for x, _ in items]), [y for _, y in items]


# --- shapes ---------------------------------------------------------------------------------


def test_shapes_is_deterministic_and_splits_differ():
    a, la = stack(build_dataset("shapes", "train", num_train=32, seed=1))
    b, lb = stack(build_dataset("shapes", "train", num_train=32, seed=1))
    c, _ = stack(build_dataset("shapes", "test", num_test=32, seed=1))
    d, _ = stack(build_dataset("shapes", "train", num_train=32, seed=2))
    assert torch.equal(a, b) and la == lb
    assert not torch.equal(a, c)
    assert not torch.equal(a, d)


def test_shapes_items_are_labelled_images_in_unit_range():
    ds = build_dataset("shapes", "train", num_train=40)
    x, labels = stack(ds)
    assert len(ds) == 40 and ds.shape == (3, 32, 32) and x.shape == (40, 3, 32, 32)
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert x.min() == -1 or x.min() < -0.8  # a dark background
    assert sorted(set(labels)) == list(range(4)) and all(isinstance(y, int) for y in labels)
    assert ds.num_classes == 4 and ds.class_names == CLASS_NAMES
    assert len(x.unique(dim=0)) == 40  # position, size and colour vary


def test_shapes_classes_cycle_so_they_are_exactly_balanced():
    """Image i is of class i mod 4, so any number of images is balanced to within one."""
    _, labels = stack(build_dataset("shapes", "test", num_test=42, image_size=8))
    assert labels == [i % 4 for i in range(42)]
    assert Counter(labels[:40]) == {0: 10, 1: 10, 2: 10, 3: 10}


def test_shapes_other_sizes_and_channels():
    ds = build_dataset("shapes", "test", image_size=16, channels=1, num_test=4)
    assert ds.shape == (1, 16, 16) and ds[3][0].shape == (1, 16, 16)
    assert build_dataset("shapes", "train", image_size=64, num_train=2)[1][0].shape == (3, 64, 64)


def test_shapes_default_sizes():
    assert len(build_dataset("shapes", "train")) == 10000
    assert len(build_dataset("shapes", "test")) == 1000


# --- 2-D toy sets ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["moons", "eight_gaussians", "swiss_roll", "checkerboard"])
def test_toy_sets_are_deterministic_2d_points_near_unit_range(name):
    ds = build_dataset(name, "train", num_train=500, seed=3)
    x, labels = stack(ds)
    assert ds.shape == (2,) and x.shape == (500, 2) and x.dtype == torch.float32
    assert torch.equal(x, stack(build_dataset(name, "train", num_train=500, seed=3))[0])
    assert not torch.equal(x, stack(build_dataset(name, "test", num_test=500, seed=3))[0])
    assert x.abs().max() < 1.2 and x.std() > 0.2
    assert all(0 <= y < ds.num_classes for y in labels)


def test_moons_labels_are_the_upper_and_lower_moon():
    """Undoing the scaling, label 0 ("upper") lies on the unit circle about (0, 0) and label 1
    ("lower") on the unit circle about (1, 0.5), up to the 0.05 noise."""
    ds = build_dataset("moons", "train", num_train=2000)
    points = ds.points.double() * 1.6 + torch.tensor([0.5, 0.25], dtype=torch.float64)
    assert ds.class_names == ("upper", "lower")
    for label, centre in [(0, (0.0, 0.0)), (1, (1.0, 0.5))]:
        mine = points[ds.labels == label]
        radius = (mine - torch.tensor(centre, dtype=torch.float64)).norm(dim=1)
        assert len(mine) > 800 and (radius - 1).abs().mean() < 0.06


def test_eight_gaussians_label_k_centres_on_mode_k():
    ds = build_dataset("eight_gaussians", "train", num_train=4000)
    for k in range(8):
        mine = ds.points[ds.labels == k]
        angle = torch.tensor(k * torch.pi / 4)
        mode = 0.8 * torch.stack([angle.cos(), angle.sin()])
        assert len(mine) > 300 and (mine.mean(0) - mode).norm() < 0.02
        assert 0.04 < mine.std(0).mean() < 0.06


def test_checkerboard_fills_the_squares_whose_row_plus_column_is_even():
    """Squares are counted from (-1, -1), column along x and row along y: the bottom-left square
    and every other one are filled, all eight about equally."""
    x = build_dataset("checkerboard", "train", num_train=4000).points
    col, row = ((x + 1) * 2).floor().long().unbind(1)
    assert ((row + col) % 2 == 0).all() and col.min() == row.min() == 0
    counts = Counter(zip(col.tolist(), row.tolist(), strict=True))
    assert len(counts) == 8 and min(counts.values()) > 400


def test_toy_labels():
    assert build_dataset("eight_gaussians", "train").num_classes == 8
    assert sorted(set(stack(build_dataset("moons", "train", num_train=100))[1])) == [0, 1]
    assert set(stack(build_dataset("swiss_roll", "train", num_train=50))[1]) == {0}


# --- registry -------------------------------------------------------------------------------


def test_unknown_name_and_split_name_the_choices():
    with pytest.raises(ValueError, match="shapes"):
        build_dataset("imagenet", "train")
    with pytest.raises(ValueError, match="train, test"):
        build_dataset("shapes", "val")


def test_every_dataset_has_metadata():
    assert {"shapes", "moons", "cifar10", "mnist", "image_folder"} <= set(DATASETS)
    for name in ["shapes", "moons", "eight_gaussians", "swiss_roll", "checkerboard"]:
        ds = build_dataset(name, "test", num_test=8)
        assert ds.num_classes == len(ds.class_names) >= 1
        assert tuple(ds[0][0].shape) == ds.shape


@pytest.mark.parametrize("override", ["data.channels=3", "data.image_size=32"])
def test_a_toy_set_refuses_image_settings_naming_the_key(compose, override):
    """data.channels=3 gave a matmul traceback at the first batch, data.image_size=32 a
    misleading "data=moons is images"; both name the key and the values the points need."""
    from diffuse_cli.build import build_data, build_model
    from diffuse_cli.errors import UserError

    cfg = compose(["data=moons", "model=mlp", override])
    for build in (lambda: build_data(cfg, "train"), lambda: build_model(cfg)):
        with pytest.raises(UserError) as err:
            build()
        message = str(err.value)
        assert override in message and "data.channels=2 and data.image_size=0" in message
        assert "\n" not in message


@pytest.mark.parametrize("name", ["shapes", "moons"])
def test_a_negative_seed_names_data_seed(name):
    with pytest.raises(DataError, match=r"^data.seed=-1 must be >= 0$"):
        build_dataset(name, "train", num_train=4, seed=-1)


# --- random_hflip ---------------------------------------------------------------------------


def test_random_hflip_is_reproducible_and_flips_about_half():
    batch = torch.arange(64 * 4, dtype=torch.float32).view(64, 1, 1, 4)
    a = random_hflip(batch, torch.Generator().manual_seed(0))
    b = random_hflip(batch, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    flipped = (a != batch).flatten(1).any(1)
    assert torch.equal(a[flipped], batch[flipped].flip(-1))
    assert torch.equal(a[~flipped], batch[~flipped])
    assert 16 < flipped.sum() < 48


# --- image_folder ---------------------------------------------------------------------------


def write_images(folder, names_modes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, mode, size in names_modes:
        channels = {"L": 1, "RGB": 3, "RGBA": 4}.get(mode, 3)
        array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
        image = Image.fromarray(array.squeeze(-1) if channels == 1 else array)
        if mode == "P":
            image = image.convert("P")
        image.save(folder / name)


def test_image_folder_with_class_subfolders_and_mixed_modes(tmp_path):
    write_images(tmp_path / "cats", [("a.png", "RGB", (40, 30)), ("b.JPG", "L", (20, 50))])
    write_images(tmp_path / "dogs" / "nested", [("c.png", "RGBA", (32, 32))])
    write_images(tmp_path / "dogs", [("d.gif", "P", (64, 64))])
    (tmp_path / "dogs" / "notes.txt").write_text("not an image, ignored")
    ds = build_dataset("image_folder", "train", root=tmp_path, image_size=16)
    assert ds.class_names == ("cats", "dogs") and ds.num_classes == 2
    assert len(ds) == 4 and ds.shape == (3, 16, 16)
    x, labels = stack(ds)
    assert x.shape == (4, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert labels == [0, 0, 1, 1]
    grey = build_dataset("image_folder", "test", root=tmp_path, image_size=8, channels=1)
    assert grey[2][0].shape == (1, 8, 8)


def test_image_folder_without_subfolders_is_one_class_and_splits_by_train_folder(tmp_path):
    write_images(tmp_path / "flat", [("a.png", "RGB", (10, 10)), ("b.webp", "RGB", (12, 10))])
    ds = ImageFolder(tmp_path / "flat", image_size=8)
    assert ds.class_names == (".",) and [y for _, y in [ds[0], ds[1]]] == [0, 0]
    write_images(tmp_path / "split" / "train", [("a.png", "RGB", (10, 10))])
    write_images(tmp_path / "split" / "test", [("b.png", "RGB", (10, 10)), ("c.png", "L", (9, 9))])
    assert len(ImageFolder(tmp_path / "split", "train")) == 1
    assert len(ImageFolder(tmp_path / "split", "test")) == 2


def test_image_folder_leaves_out_hidden_files_and_archive_metadata(tmp_path):
    write_images(tmp_path / "cats", [("a.png", "RGB", (10, 10))])
    write_images(tmp_path / "cats" / ".ipynb_checkpoints", [("a-checkpoint.png", "RGB", (9, 9))])
    write_images(tmp_path / "__MACOSX" / "cats", [("._a.png", "RGB", (9, 9))])
    write_images(tmp_path / ".thumbs", [("t.png", "RGB", (9, 9))])
    (tmp_path / "cats" / "._b.png").write_bytes(b"AppleDouble metadata, not an image")
    ds = ImageFolder(tmp_path, image_size=8)
    assert ds.files == [tmp_path / "cats" / "a.png"] and ds.class_names == ("cats",)


def test_image_folder_follows_symlinked_folders_but_not_loops(tmp_path):
    """Class folders linked from another disk count as classes (under their link's name); a
    link back to a folder it is in is not walked again, and hidden or dangling links stay out."""
    disk = tmp_path / "disk"
    write_images(disk / "cats", [("a.png", "RGB", (8, 8)), ("b.png", "RGB", (8, 8))])
    write_images(disk / "dogs", [("c.png", "RGB", (8, 8))])
    root = tmp_path / "data"
    root.mkdir()
    (root / "cats").symlink_to(disk / "cats", target_is_directory=True)
    (root / "dogs").symlink_to(disk / "dogs", target_is_directory=True)
    (root / ".cache").symlink_to(disk / "cats", target_is_directory=True)
    (disk / "cats" / "again").symlink_to(disk / "cats", target_is_directory=True)
    (disk / "dogs" / "up").symlink_to(root, target_is_directory=True)
    (root / "gone.png").symlink_to(tmp_path / "deleted.png")
    ds = ImageFolder(root, image_size=8)
    cats, dogs = root / "cats", root / "dogs"
    assert ds.files == [cats / "a.png", cats / "b.png", dogs / "c.png"]
    assert ds.class_names == ("cats", "dogs") and ds.labels == [0, 0, 1]


def write_solid(folder, name, grey):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), grey).save(folder / name)


def test_image_folder_cap_keeps_evenly_spaced_files_and_their_labels(tmp_path):
    """3 cats then 9 dogs (sorted), capped at 4: files 0, 3, 6, 9 (1 cat, 3 dogs, as 3:9), not
    the first 4. Each image's grey level is its class's, so a label must match its image."""
    for i in range(3):
        write_solid(tmp_path / "cats", f"{i}.png", 0)
    for i in range(9):
        write_solid(tmp_path / "dogs", f"{i}.png", 255)
    ds = build_dataset("image_folder", "train", root=tmp_path, image_size=4, num_train=4)
    everything = ImageFolder(tmp_path, image_size=4).files
    assert ds.files == [everything[i] for i in (0, 3, 6, 9)]
    x, labels = stack(ds)
    assert labels == [0, 1, 1, 1]
    assert torch.equal(x[:, 0, 0, 0], torch.tensor([-1.0, 1.0, 1.0, 1.0]))
    assert len(build_dataset("image_folder", "test", root=tmp_path, num_test=50)) == 12


def test_image_folder_test_labels_are_the_training_split_s(tmp_path):
    """test/ lacks class b: c must keep train's label 2, not become 1."""
    for name in "abc":
        write_images(tmp_path / "train" / name, [("x.png", "RGB", (8, 8))])
    for name in "ac":
        write_images(tmp_path / "test" / name, [("x.png", "RGB", (8, 8))])
    test = ImageFolder(tmp_path, "test", image_size=8)
    assert test.class_names == ("a", "b", "c") and [y for _, y in [test[0], test[1]]] == [0, 2]
    write_images(tmp_path / "test" / "d", [("x.png", "RGB", (8, 8))])
    with pytest.raises(DataError, match=r"has classes that .*train lacks \(d\)"):
        ImageFolder(tmp_path, "test", image_size=8)


def test_image_folder_missing_or_empty_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset("image_folder", "train", root=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=str(tmp_path / "empty")):
        build_dataset("image_folder", "train", root=tmp_path / "empty")


@pytest.mark.parametrize("name", ["broken.png", "broken.jpg"])
def test_corrupt_image_error_names_the_file(tmp_path, name):
    write_images(tmp_path, [("good.png", "RGB", (16, 16)), (name, "RGB", (64, 64))])
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])  # truncated
    ds = ImageFolder(tmp_path, image_size=8)
    bad = ds.files.index(tmp_path / name)
    with pytest.raises(DataError, match=name):
        ds[bad]
    (tmp_path / name).write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=name):
        ds[bad]


def test_image_folder_crops_the_centre_of_the_longer_side(tmp_path):
    """A 30x10 image at image_size=10 needs no resizing and keeps columns 10..19, the centre
    (a top-left crop would keep 0..9); each column's grey level says which column it was."""
    columns = np.arange(30, dtype=np.uint8) * 8
    Image.fromarray(np.tile(columns, (10, 1)), "L").save(tmp_path / "wide.png")
    x, _ = build_dataset("image_folder", "train", root=tmp_path, image_size=10, channels=1)[0]
    expected = torch.from_numpy(columns[10:20]).float() / 127.5 - 1
    assert x.shape == (1, 10, 10) and torch.equal(x[0], expected.expand(10, 10))


def test_image_folder_puts_transparent_pixels_on_white(tmp_path):
    """Transparent pixels' colour is arbitrary (here black): they load as white, +1."""
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    x, _ = build_dataset("image_folder", "train", root=tmp_path, image_size=8)[0]
    assert torch.equal(x, torch.ones(3, 8, 8))


@pytest.mark.parametrize("mode, key", [("P", 0), ("RGB", (0, 0, 0))])
def test_image_folder_puts_colour_keyed_pixels_on_white(tmp_path, mode, key):
    """PNG's other transparency: no alpha channel, but a palette index or colour marked
    transparent (image.info["transparency"]); those black pixels load as white too."""
    image = Image.new("RGB", (4, 4), (0, 0, 0))
    image = image.convert("P") if mode == "P" else image
    image.save(tmp_path / "keyed.png", transparency=key)
    with Image.open(tmp_path / "keyed.png") as saved:
        assert saved.mode == mode and saved.info["transparency"] == key
    x, _ = build_dataset("image_folder", "train", root=tmp_path, image_size=4)[0]
    assert torch.equal(x, torch.ones(3, 4, 4))


def test_image_folder_channels_are_red_green_blue(tmp_path):
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "red.png")
    x, _ = build_dataset("image_folder", "train", root=tmp_path, image_size=4)[0]
    assert torch.equal(x[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))


def test_image_folder_turns_images_upright_by_their_exif_orientation(tmp_path):
    """EXIF orientation 6 (a phone held upright) means: turn 90 degrees clockwise to view. The
    stored top-left white quadrant is then the top-right one."""
    stored = np.zeros((8, 8), dtype=np.uint8)
    stored[:4, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    Image.fromarray(stored, "L").save(tmp_path / "phone.png", exif=exif)
    x, _ = build_dataset("image_folder", "train", root=tmp_path, image_size=8, channels=1)[0]
    upright = -torch.ones(8, 8)
    upright[:4, 4:] = 1.0
    assert torch.equal(x[0], upright)


def test_image_folder_resizes_with_a_cubic_filter(tmp_path):
    """A step 0 | 200 enlarged 8 -> 16 pixels: a cubic filter interpolates (levels between 0
    and 200, which nearest-neighbour has not) and overshoots past 200 beside the step (which
    bilinear does not)."""
    step = np.zeros((8, 8), dtype=np.uint8)
    step[:, 4:] = 200
    Image.fromarray(step, "L").save(tmp_path / "step.png")
    x, _ = build_dataset("image_folder", "train", root=tmp_path, image_size=16, channels=1)[0]
    levels = ((x[0, 0] + 1) * 127.5).round()
    assert ((levels > 0) & (levels < 200)).any() and levels.max() > 205


def test_image_folder_scales_16_bit_grey_to_8_bits(tmp_path):
    """16-bit levels 0, 257 * 100, 257 * 200, 65535 are 8-bit 0, 100, 200, 255 (divided by
    257, not clipped at 255)."""
    levels = np.array([0, 25_700, 51_400, 65_535], dtype=np.uint16)
    image = Image.fromarray(np.tile(levels, (4, 1)))
    assert image.mode.startswith("I")
    image.save(tmp_path / "deep.png")
    x, _ = build_dataset("image_folder", "train", root=tmp_path, image_size=4, channels=1)[0]
    expected = torch.tensor([0.0, 100.0, 200.0, 255.0]) / 127.5 - 1
    assert torch.equal(x[0], expected.expand(4, 4))


# --- cifar10 / mnist ------------------------------------------------------------------------


def test_missing_cifar10_says_where_to_put_the_files(tmp_path):
    with pytest.raises(DataError) as err:
        build_dataset("cifar10", "train", root=tmp_path)
    message = str(err.value)
    assert "cifar-10-batches-py" in message and "data.download=true" in message
    assert str(tmp_path) in message and message.count(". ") == 0


def fake_cifar10(root, per_batch=3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, size=per_batch).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def test_cifar10_reads_the_python_batches(tmp_path):
    fake_cifar10(tmp_path)
    train = build_dataset("cifar10", "train", root=tmp_path)
    test = build_dataset("cifar10", "test", root=tmp_path, image_size=16, channels=1)
    assert len(train) == 15 and len(test) == 3
    assert train.num_classes == 10 and train.class_names[3] == "cat"
    x, y = train[4]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1 and 0 <= y < 10
    assert test[0][0].shape == test.shape == (1, 16, 16)
    assert len(build_dataset("cifar10", "train", root=tmp_path, num_train=5)) == 5


def test_cifar10_rows_are_red_green_and_blue_planes(tmp_path):
    """A CIFAR-10 row is 1024 red values, then 1024 green, then 1024 blue (channel-major, as
    the python version stores them): planes 0, 128, 255 give every pixel (-1, 128/127.5 - 1, 1)."""
    fake_cifar10(tmp_path)
    row = np.repeat(np.array([0, 128, 255], dtype=np.uint8), 1024)[None]
    batch = {"data": row, "labels": [7]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch))
    x, y = build_dataset("cifar10", "test", root=tmp_path)[0]
    expected = torch.tensor([0.0, 128.0, 255.0]) / 127.5 - 1
    assert y == 7 and torch.equal(x, expected[:, None, None].expand(3, 32, 32))


def write_idx(path, array):
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_missing_files_and_fake_files(tmp_path):
    with pytest.raises(DataError, match="data.download=true"):
        build_dataset("mnist", "train", root=tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in [("train", 6), ("t10k", 2)]:
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    ds = build_dataset("mnist", "train", root=tmp_path, image_size=32, channels=3)
    assert len(ds) == 6 and ds.num_classes == 10 and ds.shape == (3, 32, 32)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1 and isinstance(y, int)
    assert build_dataset("mnist", "test", root=tmp_path, channels=1)[1][0].shape == (1, 32, 32)


def fake_mnist(root, images=None, labels=None):
    """Writes all four MNIST files (6 training, 2 test images); `images` / `labels` replace the
    training split's."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in [("train", 6), ("t10k", 2)]:
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    if images is not None:
        write_idx(raw / "train-images-idx3-ubyte", images)
        write_idx(raw / "train-labels-idx1-ubyte", labels)
    return raw


def test_mnist_items_are_the_stored_images_and_labels(tmp_path):
    """At 28x28 nothing is resized: item i is image i as stored (row-major, not transposed,
    not inverted), with label i."""
    rows, cols = np.mgrid[0:28, 0:28]
    images = np.stack([(rows * 9 + cols + 40 * n) % 256 for n in range(4)])
    labels = np.array([3, 0, 9, 4])
    fake_mnist(tmp_path, images, labels)
    ds = build_dataset("mnist", "train", root=tmp_path, image_size=28, channels=1)
    x, y = stack(ds)
    assert y == [3, 0, 9, 4]
    expected = torch.from_numpy(images).float()[:, None] / 127.5 - 1
    assert torch.equal(x, expected)


def test_mnist_is_resized_to_image_size_not_padded(tmp_path):
    """data/mnist.yaml: resized (bilinear) from 28x28, so a white digit stays white to every
    edge of the 32x32 image; padding would add a black border."""
    fake_mnist(tmp_path, np.full((1, 28, 28), 255), np.array([7]))
    x, _ = build_dataset("mnist", "train", root=tmp_path, image_size=32, channels=1)[0]
    torch.testing.assert_close(x, torch.ones(1, 32, 32))


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda data: data[:-100], "bytes where its header declares"),  # truncated download
        (lambda data: b"", "shorter than an idx header"),
        (lambda data: b"PK\x03\x04" + data[4:], "not an idx file"),  # still zipped
    ],
)
def test_a_damaged_mnist_file_is_named_with_the_fix(tmp_path, damage, problem):
    raw = fake_mnist(tmp_path)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError) as err:
        build_dataset("mnist", "train", root=tmp_path)
    message = str(err.value)
    assert f"MNIST file {path} is damaged" in message and problem in message
    assert "delete it and download again" in message and "\n" not in message
    assert len(build_dataset("mnist", "test", root=tmp_path)) == 2  # the other split reads


def test_mnist_images_and_labels_of_different_lengths_are_refused(tmp_path):
    raw = fake_mnist(tmp_path)
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(5))
    with pytest.raises(DataError, match="6 images, 5 labels"):
        build_dataset("mnist", "train", root=tmp_path)


def test_cifar10_items_follow_the_batches_in_order(tmp_path):
    """Item i is row i of the batches read in order (data_batch_1..5), with its own label."""
    fake_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    for b in range(1, 6):
        rows = np.repeat(np.arange(3, dtype=np.uint8)[:, None] + 3 * b, 3072, axis=1)
        labels = [(3 * b + k) % 10 for k in range(3)]
        (folder / f"data_batch_{b}").write_bytes(pickle.dumps({"data": rows, "labels": labels}))
    x, y = stack(build_dataset("cifar10", "train", root=tmp_path))
    assert y == [(3 + k) % 10 for k in range(15)]
    assert torch.equal(x[:, 0, 0, 0], (torch.arange(15.0) + 3) / 127.5 - 1)


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("data_batch_2", [np.zeros((3, 3072), np.uint8), [0, 1, 2]], "not a dict"),
        ("data_batch_3", {"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1]}, "2 labels"),
        ("test_batch", {"data": np.zeros((3, 1024), np.uint8), "labels": [0, 1, 2]}, "3072"),
        ("test_batch", {"data": np.zeros((1, 3072), np.uint8), "labels": [10]}, "outside 0..9"),
        ("batches.meta", ["airplane", "automobile"], "10 'label_names'"),
        ("batches.meta", {"label_names": ["cat"] * 9}, "10 'label_names'"),
    ],
)
def test_a_cifar10_file_of_the_wrong_structure_is_named(tmp_path, name, content, problem):
    fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / name
    path.write_bytes(pickle.dumps(content))
    split = "test" if name == "test_batch" else "train"
    with pytest.raises(DataError) as err:
        build_dataset("cifar10", split, root=tmp_path)
    message = str(err.value)
    assert f"CIFAR-10 file {path} is not a python-version file" in message and problem in message
    assert "delete it and download again" in message and "\n" not in message


def test_missing_cifar10_batches_are_named(tmp_path):
    fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py/ lacks data_batch_4; place"):
        build_dataset("cifar10", "test", root=tmp_path)


def test_an_image_folder_run_from_before_data_subset_keeps_its_first_files(tmp_path):
    """A capped image-folder run trained on its first N files; read back without the key, its
    config says so, and the same files come back (a resume with the new default is refused by
    the resume check, which compares data settings)."""
    from omegaconf import OmegaConf

    from diffuse_cli import runs

    for i in range(3):
        write_solid(tmp_path / "img" / "cats", f"{i}.png", 0)
        write_solid(tmp_path / "img" / "dogs", f"{i}.png", 255)
    old = {"data": {"name": "image_folder", "root": str(tmp_path / "img"), "num_train": 2}}
    (tmp_path / "run").mkdir()
    OmegaConf.save(OmegaConf.create(old), tmp_path / "run" / runs.CONFIG_FILE)
    assert runs.read_run_config(tmp_path / "run").data.subset == "first"
    old["data"] |= {"name": "shapes"}  # uncapped in effect: the same either way
    OmegaConf.save(OmegaConf.create(old), tmp_path / "run" / runs.CONFIG_FILE)
    assert runs.read_run_config(tmp_path / "run").data.subset == "evenly_spaced"
    first = build_dataset("image_folder", "train", root=tmp_path / "img", num_train=2,
                          subset="first")  # fmt: skip
    assert [p.parent.name for p in first.files] == ["cats", "cats"]
    with pytest.raises(DataError, match="data.subset='every': choose evenly_spaced or first"):
        build_dataset("image_folder", "train", root=tmp_path / "img", subset="every")


@pytest.mark.parametrize("name, label", [("cifar10", "CIFAR-10"), ("mnist", "MNIST")])
def test_a_failed_download_is_one_data_error_naming_the_set_and_folder(
    name, label, tmp_path, monkeypatch
):
    import torchvision

    from diffuse_cli.data import vision

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError, match=f"could not download {label} into {tmp_path}: network"):
        getattr(vision, name)("train", root=tmp_path, download=True)
