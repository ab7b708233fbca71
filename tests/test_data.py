"""Dataset discovery, the patient split and duplicate handling."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumo.data import DataError, discover, load_images, merge_duplicates, patient_id, \
    split_by_block, split_by_patient
from synthetic import encode, make_dataset, synthetic_xray


@pytest.mark.parametrize("name, expected", [
    ("person1000_bacteria_2931.jpeg", "person1000"),
    ("person1000_virus_1681.jpeg", "person1000"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
    ("scan.png", "file:scan"),
])
def test_patient_id_from_file_name(name, expected):
    assert patient_id(Path(name)) == expected


def test_discover_accepts_downloaded_layout_and_merges_small_val(tmp_path):
    make_dataset(tmp_path / "chest_xray" / "train", n_per_class=4)
    make_dataset(tmp_path / "chest_xray" / "val", n_per_class=2)
    make_dataset(tmp_path / "chest_xray" / "test", n_per_class=3)
    train, val = discover(tmp_path)
    assert val == []  # a val/ of under 100 images is merged, not trusted
    assert len(train) == 12  # 8 train + 4 val; test/ never read for training
    assert not any("test" in s.path.parts for s in train)


def test_discover_is_case_insensitive_and_skips_hidden_and_non_images(tmp_path):
    make_dataset(tmp_path, n_per_class=2)
    (tmp_path / "NORMAL").rename(tmp_path / "normal")
    (tmp_path / "normal" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "normal" / "notes.txt").write_text("not an image")
    train, _ = discover(tmp_path)
    assert sorted(s.label for s in train) == [0, 0, 1, 1]


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "not found"),
    (lambda root: root.mkdir(), "no NORMAL/ or PNEUMONIA/"),
    (lambda root: (root / "NORMAL").mkdir(parents=True), "no images"),
    (lambda root: make_dataset(root) and shutil.rmtree(root / "PNEUMONIA"), "only NORMAL"),
])
def test_bad_data_folders_get_clear_errors(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=message):
        discover(root)


def test_unreadable_images_are_skipped_with_a_count(tmp_path, caplog):
    make_dataset(tmp_path, n_per_class=2)
    (tmp_path / "NORMAL" / "IM-9999-0001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    train, _ = discover(tmp_path)
    kept, images = load_images(train, 71, use_cache=False, progress=False)
    assert len(kept) == len(images) == 4
    assert "skipped 1 unreadable" in caplog.text


def test_duplicates_are_merged_into_one_group_and_conflicts_dropped(tmp_path):
    make_dataset(tmp_path, n_per_class=4)
    normal = sorted((tmp_path / "NORMAL").iterdir())
    shutil.copy(normal[0], tmp_path / "NORMAL" / "IM-0777-0001.png")  # same bytes, other patient
    shutil.copy(normal[1], tmp_path / "PNEUMONIA" / "person77_virus_1.png")  # label conflict
    samples, _ = discover(tmp_path)
    kept, n_duplicates = merge_duplicates(samples)
    assert n_duplicates == 2
    groups = {s.path.name: s.group for s in kept}
    assert groups["IM-0777-0001.png"] == groups[normal[0].name]
    assert "person77_virus_1.png" not in groups and normal[1].name not in groups


def _many_samples(tmp_path, n_patients=60):
    from pneumo.data import Sample

    samples = []
    rng = np.random.default_rng(0)
    for p in range(n_patients):
        label = int(p % 3 != 0)
        name = f"person{p}" if label else f"IM-{p:04d}"
        for k in range(int(rng.integers(1, 4))):
            samples.append(Sample(path=tmp_path / f"{name}-{k}.png", label=label, group=name))
    return samples


@pytest.mark.parametrize("splitter", [split_by_patient, split_by_block])
def test_split_never_puts_one_patient_on_both_sides(tmp_path, splitter):
    samples = _many_samples(tmp_path)
    train_idx, val_idx = splitter(samples, 0.2, seed=3)
    assert set(train_idx).isdisjoint(val_idx)
    assert len(train_idx) + len(val_idx) == len(samples)
    assert {samples[i].group for i in train_idx}.isdisjoint({samples[i].group for i in val_idx})
    for side in (train_idx, val_idx):  # stratified: both classes on both sides
        assert {samples[i].label for i in side} == {0, 1}
    assert 0.1 < len(val_idx) / len(samples) < 0.35


def test_patient_split_is_deterministic_from_the_seed(tmp_path):
    samples = _many_samples(tmp_path)
    assert split_by_patient(samples, 0.2, 7) == split_by_patient(samples, 0.2, 7)
    assert split_by_patient(samples, 0.2, 7) != split_by_patient(samples, 0.2, 8)


def test_block_split_holds_out_the_lowest_ids_of_each_family(tmp_path):
    samples = _many_samples(tmp_path)
    _, val_idx = split_by_block(samples, 0.2, seed=0)
    val_numbers = {int(samples[i].group.removeprefix("person").removeprefix("IM-")) for i in val_idx
                   if samples[i].label == 1}
    train_numbers = {int(s.group.removeprefix("person")) for s in samples
                     if s.label == 1} - val_numbers
    assert max(val_numbers) < min(train_numbers)


def test_real_training_split_is_grouped_by_patient(train_data):
    from pneumo.config import TrainConfig
    from pneumo.train import prepare_split

    train, val, n_duplicates = prepare_split(TrainConfig(data_dir=str(train_data)))
    assert n_duplicates >= 26  # the data README counts 26 extra copies
    assert {s.group for s in train}.isdisjoint({s.group for s in val})
    assert 0.15 < len(val) / (len(train) + len(val)) < 0.25


def test_cache_round_trip_returns_identical_arrays(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_CACHE_DIR", str(tmp_path / "cache"))
    make_dataset(tmp_path / "data", n_per_class=2)
    samples, _ = discover(tmp_path / "data")
    _, first = load_images(samples, 71, progress=False)
    assert list((tmp_path / "cache").glob("images-*.npz"))
    _, second = load_images(samples, 71, progress=False)
    np.testing.assert_array_equal(first, second)


def test_generated_png_encodes(tmp_path):
    assert encode(synthetic_xray(0)).startswith(b"\x89PNG")


def _with_manifest(root: Path, rows: list[str] | None = None) -> Path:
    """A generated folder with a manifest.csv giving each file a patient, age and view."""
    make_dataset(root, n_per_class=6)
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    if rows is None:
        rows = [f"{f},{f.parts[0]},{i // 2},{10 + 10 * i},,{'PA' if i % 2 else 'AP'},x"
                for i, f in enumerate(files)]
    (root / "manifest.csv").write_text(
        "file,label,patient_id,age,sex,view,nih_finding_labels\n" + "\n".join(rows) + "\n")
    return root


def test_manifest_gives_patient_view_and_age_not_file_names(tmp_path):
    root = _with_manifest(tmp_path / "adults")
    samples, _ = discover(root)
    assert len(samples) == 12
    assert {s.source for s in samples} == {"adults"}
    assert len({s.group for s in samples}) == 6  # two files per manifest patient
    assert all(s.group.startswith("patient:") for s in samples)
    assert {s.view for s in samples} == {"PA", "AP"}
    assert sorted(s.age for s in samples)[:2] == [10, 20]


@pytest.mark.parametrize("broken, message", [
    (lambda rows: rows[1:], "is not listed in"),
    (lambda rows: [rows[0].replace(",NORMAL,", ",PNEUMONIA,")] + rows[1:], "the manifest says"),
])
def test_manifest_that_disagrees_with_the_folder_is_refused(tmp_path, broken, message):
    root = _with_manifest(tmp_path / "adults")
    lines = (root / "manifest.csv").read_text().splitlines()
    (root / "manifest.csv").write_text("\n".join([lines[0], *broken(lines[1:])]) + "\n")
    with pytest.raises(DataError, match=message):
        discover(root)


def test_source_name_skips_split_folders(tmp_path):
    from pneumo.data import source_name

    assert source_name(tmp_path / "chest_xray" / "train") == "chest_xray"
    assert source_name(tmp_path / "nih-dev") == "nih-dev"


def test_each_source_is_split_on_its_own(tmp_path):
    from pneumo.config import TrainConfig
    from pneumo.train import prepare_split

    kids = make_dataset(tmp_path / "kids", n_per_class=10)
    adults = _with_manifest(tmp_path / "adults")
    config = TrainConfig(data_dir=str(kids), extra_sources=[str(adults)], val_fraction=0.34)
    train, val, _ = prepare_split(config)
    alone, alone_val, _ = prepare_split(TrainConfig(data_dir=str(kids), val_fraction=0.34))
    # the first source splits exactly as it does alone; every source has a validation part
    assert [s.path for s in val if s.source == "kids"] == [s.path for s in alone_val]
    assert {s.source for s in val} == {"kids", "adults"}
    for source in ("kids", "adults"):
        assert {s.group for s in train if s.source == source}.isdisjoint(
            {s.group for s in val if s.source == source})
    with pytest.raises(DataError, match="share the name"):
        prepare_split(TrainConfig(data_dir=str(kids), extra_sources=[str(kids)]))


def test_sample_weights_balance_sources_and_classes():
    from pneumo.data import Sample
    from pneumo.train import sample_weights

    samples = ([Sample(Path("a"), 0, "g", "kids")] * 10 + [Sample(Path("b"), 1, "g", "kids")] * 30
               + [Sample(Path("c"), 0, "g", "adults")] * 4 + [Sample(Path("d"), 1, "g", "adults")] * 6)
    weights = sample_weights(samples, "source")
    labels = np.array([s.label for s in samples])
    sources = np.array([s.source for s in samples])
    cells = [weights[(labels == y) & (sources == s)].sum() for y in (0, 1) for s in ("kids", "adults")]
    np.testing.assert_allclose(cells, [len(samples) / 4] * 4, rtol=1e-5)
    by_class = sample_weights(samples, "class")
    np.testing.assert_allclose([by_class[labels == y].sum() for y in (0, 1)], [len(samples) / 2] * 2,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="unknown balance"):
        sample_weights(samples, "patient")
