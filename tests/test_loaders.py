"""Files a loader cannot use are one named error, never a traceback: weights that are not
weights, models of another shape, a full disk inside torch's writer, an object store that
keeps failing."""

from __future__ import annotations

import pickle

import pytest
import torch

from orthodiff.errors import OrthodiffError


def _not_weights(path):
    """A pickle holding an object (what `weights_only=True` refuses to rebuild)."""
    path.write_bytes(pickle.dumps(OrthodiffError("x"), protocol=2))
    return path


@pytest.mark.parametrize("content", ["pickle", "text", "tensor"])
def test_read_weights_names_a_file_that_is_not_weights(tmp_path, content):
    from orthodiff.files import read_weights

    path = tmp_path / "w.pt"
    if content == "pickle":
        _not_weights(path)
    elif content == "text":
        path.write_text("not a torch file")
    else:
        torch.save(torch.zeros(3), path)
    with pytest.raises(OrthodiffError, match=rf"{path}: not a (readable )?thing.*; get another") as err:
        read_weights(path, "thing", "get another")
    assert "\n" not in str(err.value)


def test_segment_run_sweep_probes_and_sam_checkpoints_that_are_not_weights(tmp_path):
    from orthodiff.evaluation.promptable import build_sam
    from orthodiff.heads.runs import sweep_probes
    from orthodiff.supervised.runs import load_segmenter

    _not_weights(tmp_path / "model.pt")
    with pytest.raises(OrthodiffError, match=r"model.pt: not a readable segmentation model \(UnpicklingError.*segment train"):
        load_segmenter(tmp_path)
    torch.save({"params": {}}, tmp_path / "model.pt")
    with pytest.raises(OrthodiffError, match=r"model.pt: not a segmentation model \(no image_size"):
        load_segmenter(tmp_path)
    from orthodiff.heads.runs import SWEEP_PROBES

    _not_weights(tmp_path / SWEEP_PROBES)
    with pytest.raises(OrthodiffError, match=r"not a readable sweep's probe file.*rerun `orthodiff sweep`"):
        sweep_probes(tmp_path, "fp")
    with pytest.raises(OrthodiffError, match=r"sam.pt: not a readable SAM checkpoint \(UnpicklingError"):
        build_sam("tiny", _not_weights(tmp_path / "sam.pt"))


def test_full_disk_in_torch_and_a_failing_object_store_are_one_error_line():
    from orthodiff.cli import _outside_error

    full = RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file data/3: file write failed")
    assert "is the disk full?" in _outside_error(full)
    store_error = type("EndpointConnectionError", (Exception,), {"__module__": "botocore.exceptions"})
    line = _outside_error(store_error('Could not connect to the endpoint URL: "http://127.0.0.1:5555/bucket"'))
    assert line.startswith("the object store failed after retries (EndpointConnectionError: Could not connect")
    assert _outside_error(ValueError("a bug of ours")) is None  # our bugs keep their traceback
