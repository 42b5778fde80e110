"""Pretraining: exact resume, DDP agreement across ranks, named bad input, DDIM preview."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from orthodiff.backbone import load_backbone
from orthodiff.backbone.pretrain import Pretrainer, pretrain
from orthodiff.backbone.preview import sample_preview
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore.volumes import open_volumes
from helpers import make_volume_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_volume_store(tmp_path_factory.mktemp("store") / "s.zarr")


@pytest.mark.slow
def test_resume_continues_exactly_as_an_uninterrupted_run(store, tmp_path):
    pretrain(open_volumes(store), "axial", "demo", steps=4, batch=2, out=tmp_path / "full.pt", every=2, progress=False)
    pretrain(open_volumes(store), "axial", "demo", steps=2, batch=2, out=tmp_path / "half.pt", every=2, progress=False)
    pretrain(open_volumes(store), "axial", "demo", steps=4, batch=2, out=tmp_path / "half.pt", every=2, resume=True, progress=False)
    full, resumed = (torch.load(tmp_path / f, weights_only=True) for f in ("full.pt", "half.pt"))
    assert full["history"]["loss"] == resumed["history"]["loss"] and len(full["history"]["loss"]) == 4
    assert [s for s, _ in full["history"]["val_loss"]] == [2, 4]
    for key, value in full["ema"].items():
        torch.testing.assert_close(resumed["ema"][key], value, rtol=0, atol=0)
    assert full["step"] == 4 and "optimizer" in full and full["preset"] == "demo"
    model = load_backbone(tmp_path / "full.pt", device="cpu")  # the reference layout loads back
    assert model.config.image_size == 32


def _ddp_worker(rank: int, world: int, port: int, store: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    ema = Pretrainer(open_volumes(store), "axial", "demo", steps=2, batch=1, out=f"{out_dir}/ddp.pt", every=2, progress=False).run()
    torch.save(ema.state_dict(), f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_end_with_identical_weights(store, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, store, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert (tmp_path / "ddp.pt").exists()  # written by rank 0 only
    start = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert start["lr"] == pytest.approx(1e-5 * 1 * 2)  # the reference rule scales with processes


@pytest.mark.slow
def test_bad_input_is_named_and_nothing_is_overwritten(store, tmp_path):
    with pytest.raises(OrthodiffError, match="--steps must be at least 0, --batch and --every at least 1"):
        Pretrainer(open_volumes(store), "axial", "demo", steps=-1)
    with pytest.raises(OrthodiffError, match="no sagittal training volumes"):
        Pretrainer(open_volumes(store), "sagittal", "demo", steps=1)
    with pytest.raises(OrthodiffError, match="volumes are 32 px in-plane but preset 'tiny' expects 64"):
        Pretrainer(open_volumes(store), "axial", "tiny", steps=1)
    with pytest.raises(OrthodiffError, match="no volumes in this store"):
        from orthodiff.featurestore.store import open_root

        open_root(str(tmp_path / "empty.zarr"), create=True)
        Pretrainer(open_volumes(str(tmp_path / "empty.zarr")), "axial", "demo", steps=1)
    (tmp_path / "keep.pt").write_bytes(b"precious")
    with pytest.raises(OrthodiffError, match="keep.pt exists: pass --resume"):
        Pretrainer(open_volumes(store), "axial", "demo", steps=1, out=tmp_path / "keep.pt")
    assert (tmp_path / "keep.pt").read_bytes() == b"precious"
    result = subprocess.run(
        [sys.executable, "-m", "orthodiff", "pretrain", "--plane", "axial", "--store", store,
         "--out", str(tmp_path / "x.pt"), "--steps", "-1"], capture_output=True, text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--steps" in result.stderr


@pytest.mark.slow
def test_sample_preview_writes_a_png(store, tmp_path):
    ckpt = pretrain(open_volumes(store), "axial", "demo", steps=1, batch=1, out=tmp_path / "a.pt", every=1, progress=False)
    png = sample_preview(ckpt, tmp_path / "s.png", n=2, steps=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(OrthodiffError, match="--n and --sampling-steps must be at least 1"):
        sample_preview(ckpt, tmp_path / "t.png", n=0)


@pytest.mark.slow
def test_healthy_pretraining_uses_only_all_negative_exams(store, tmp_path):
    from orthodiff.backbone.pretrain import healthy_series
    from helpers import label_catalog

    catalog = label_catalog(tmp_path / "c.parquet", sick=(0, 1, 2, 7))
    assert healthy_series(catalog) == {f"s{i}-axial" for i in (3, 4, 5, 6)}
    trainer = Pretrainer(open_volumes(store), "axial", "demo", steps=1, batch=1, out=tmp_path / "h.pt", progress=False,
                         healthy_catalog=catalog)
    assert len(trainer.train) == 3 and len(trainer.val) == 1  # s3..s5 train, s6 val
    trainer.run()
    ckpt = torch.load(tmp_path / "h.pt", weights_only=True)
    assert ckpt["healthy"] == {"catalog": catalog, "train_series": 3}
    all_sick = label_catalog(tmp_path / "sick.parquet", sick=range(8))
    with pytest.raises(OrthodiffError, match="healthy exams"):
        Pretrainer(open_volumes(store), "axial", "demo", steps=1, out=tmp_path / "x.pt", healthy_catalog=all_sick)


def _ddp_resume_worker(rank: int, world: int, port: int, store: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    run = dict(batch=1, every=2, progress=False)
    Pretrainer(open_volumes(store), "axial", "demo", steps=4, out=f"{out_dir}/full.pt", **run).run()
    Pretrainer(open_volumes(store), "axial", "demo", steps=2, out=f"{out_dir}/half.pt", **run).run()
    dist.barrier()  # rank 0 has written the step-2 checkpoint
    Pretrainer(open_volumes(store), "axial", "demo", steps=4, out=f"{out_dir}/half.pt", resume=True, **run).run()
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_resume_restores_each_ranks_generators(store, tmp_path):
    """Two gloo ranks: stop at step 2, resume to 4, and match an uninterrupted 2-rank run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_resume_worker, args=(2, port, store, str(tmp_path)), nprocs=2, join=True)
    full, resumed = (torch.load(tmp_path / f, weights_only=True) for f in ("full.pt", "half.pt"))
    assert len(full["rng"]["ranks"]) == 2
    assert not torch.equal(full["rng"]["ranks"][0]["sampler"], full["rng"]["ranks"][1]["sampler"])
    assert full["history"]["loss"] == resumed["history"]["loss"]
    for key, value in full["ema"].items():
        torch.testing.assert_close(resumed["ema"][key], value, rtol=0, atol=0)
    with pytest.raises(OrthodiffError, match=r"written by 2 process\(es\), resumed with 1"):
        Pretrainer(open_volumes(store), "axial", "demo", steps=6, batch=1, out=tmp_path / "half.pt", resume=True, progress=False).run()


@pytest.mark.slow
def test_zero_steps_writes_the_initialisation_of_the_trained_run(store, tmp_path):
    """`--steps 0` is the random-init baseline: exactly the weights a run of the same seed starts from."""
    from orthodiff.backbone import PRESETS, DiffusionUNet
    from orthodiff.backbone.checkpoint import unet_state

    Pretrainer(open_volumes(store), "axial", "demo", steps=0, out=tmp_path / "init.pt", seed=3, progress=False).run()
    ckpt = torch.load(tmp_path / "init.pt", weights_only=True)
    torch.manual_seed(3)
    fresh = DiffusionUNet(PRESETS["demo"]).state_dict()
    assert ckpt["step"] == 0 and ckpt["history"]["val_loss"][0][0] == 0
    for key, value in unet_state(ckpt).items():
        torch.testing.assert_close(value, fresh[key], rtol=0, atol=0)


@pytest.mark.slow
def test_demo_backbone_of_other_steps_is_refused_not_reused(store, tmp_path):
    from rich.console import Console

    from orthodiff.backbone import backbone_id
    from orthodiff.backbone.checkpoint import read_checkpoint
    from orthodiff.demo import demo_backbone

    console = Console(quiet=True)
    path = demo_backbone(tmp_path, store, "axial", 0, console)
    assert read_checkpoint(path)["step"] == 0
    first = backbone_id(path)
    assert demo_backbone(tmp_path, store, "axial", 0, console) == path and backbone_id(path) == first
    with pytest.raises(OrthodiffError, match="are 0 pretraining steps here, not 30 pretraining steps here"):
        demo_backbone(tmp_path, store, "axial", 30, console)
    with pytest.raises(OrthodiffError, match="are 0 pretraining steps here, not the shipped weights"):
        demo_backbone(tmp_path, store, "axial", None, console)


@pytest.mark.slow
def test_demo_uses_the_shipped_weights_checked_by_hash(store, tmp_path, monkeypatch):
    """By default the demo copies the shipped encoder; a damaged file, or a folder made with
    other weights, is refused by name."""
    import hashlib
    import json
    import shutil

    from rich.console import Console

    from orthodiff import demo
    from orthodiff.backbone.checkpoint import export_encoder

    console = Console(quiet=True)
    weights = tmp_path / "weights"
    initial = pretrain(open_volumes(store), "axial", "demo", steps=0, out=tmp_path / "init.pt", progress=False)
    export_encoder(initial, weights / "demo_axial.pt")
    digest = hashlib.sha256((weights / "demo_axial.pt").read_bytes()).hexdigest()
    (weights / "demo.json").write_text(json.dumps({"files": {"axial": {"file": "demo_axial.pt", "sha256": digest}}}))
    monkeypatch.setattr(demo, "WEIGHTS", weights)

    path = demo.demo_backbone(tmp_path / "run", store, "axial", None, console)
    assert path.read_bytes() == (weights / "demo_axial.pt").read_bytes()
    assert load_backbone(path, "cpu").output_blocks is None  # the encoder only
    assert demo.demo_backbone(tmp_path / "run", store, "axial", None, console) == path
    with pytest.raises(OrthodiffError, match="are the shipped weights, not 0 pretraining steps here"):
        demo.demo_backbone(tmp_path / "run", store, "axial", 0, console)

    other = pretrain(open_volumes(store), "axial", "demo", steps=0, seed=1, out=tmp_path / "other.pt", progress=False)
    export_encoder(other, weights / "demo_axial.pt")
    with pytest.raises(OrthodiffError, match="demo_axial.pt: sha256 .* is not the recorded .*damaged"):
        demo.demo_backbone(tmp_path / "new", store, "axial", None, console)
    (weights / "demo.json").write_text(json.dumps({"files": {"axial": {
        "file": "demo_axial.pt", "sha256": hashlib.sha256((weights / "demo_axial.pt").read_bytes()).hexdigest()}}}))
    with pytest.raises(OrthodiffError, match="are other shipped weights, not the shipped weights"):
        demo.demo_backbone(tmp_path / "run", store, "axial", None, console)
    shutil.rmtree(weights)
    with pytest.raises(OrthodiffError, match="demo.json"):
        demo.demo_backbone(tmp_path / "new", store, "axial", None, console)


def test_the_shipped_demo_weights_are_intact_encoders_of_the_demo_preset():
    import json

    from orthodiff.backbone import PRESETS, backbone_id
    from orthodiff.catalogs.tasks import PLANES
    from orthodiff.demo import WEIGHTS, shipped_weights

    manifest = json.loads((WEIGHTS / "demo.json").read_text())
    assert manifest["pretraining"]["preset"] == "demo" and manifest["pretraining"]["steps"] > 0
    for plane in PLANES:
        path = shipped_weights(plane)  # sha256 checked
        model = load_backbone(path, "cpu")
        assert model.config == PRESETS["demo"] and model.output_blocks is None
        assert backbone_id(path) == manifest["files"][plane]["backbone_id"]
        assert path.stat().st_size < 3 * 2**20
