"""Open-set datasets through get_dataset: seen classes only for closed-set training."""

import argparse

from openset_helpers import write_image_folder


def test_get_dataset_builds_the_seen_classes_of_an_image_folder(tmp_path):
    from semilearn.core.utils import get_dataset

    data = write_image_folder(tmp_path / "data")
    args = argparse.Namespace(
        dataset="image_folder",
        data_dir=str(data),
        num_classes=3,
        num_labels=6,
        img_size=32,
        crop_ratio=0.875,
        seed=0,
        net="wrn_28_2",
    )
    dsets = get_dataset(args, "fixmatch", "image_folder", 6, 3, data_dir=str(data))
    assert len(dsets["train_lb"]) == 6
    assert set(int(t) for t in dsets["eval"].targets) <= {0, 1, 2} and len(dsets["eval"]) == 6
    assert len(dsets["train_ulb"]) >= 12  # the rest of train, seen and unseen classes
