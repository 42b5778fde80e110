"""`open_store`: the whole store as one lazy `xarray.DataTree`, written by the project's own writers.

Old stores still open: the tree is a reading of the stored layout, which did not change when
`open_store` grew from the features alone to every stored kind (the byte-identity tests of
the writers are untouched). A store written here by the existing writers (volumes, `extract`,
`persona`, `radiomics`) is therefore a store of today's layout, and one holding only volumes
and features (as every store before personas) gives a tree with just those nodes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import orthodiff
from helpers import make_volume_store, random_checkpoint
from orthodiff.errors import OrthodiffError
from orthodiff.featurestore import series_groups
from orthodiff.featurestore.extract import extract
from orthodiff.featurestore.features import IncompleteFeatures
from orthodiff.featurestore.series_groups import IncompleteGroups
from orthodiff.heads.store import plane_features, plane_nodes

N = 3  # series per plane


def micro_checkpoint(path, plane: str) -> str:
    """An untrained micro backbone of 8 px volumes (fast)."""
    from orthodiff.backbone.unet import UNetConfig

    return random_checkpoint(path, plane, config=UNetConfig(8, 16, 32, (1, 1)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Volumes of two planes, axial features (timesteps and blocks requested out of order), axial
    box personas and their radiomics: each written by its command's library function."""
    from orthodiff.personas.store import make_personas
    from orthodiff.radiomics.store import extract_radiomics

    root = tmp_path_factory.mktemp("tree")
    path = make_volume_store(root / "s.zarr", n=N, size=8, planes=("axial", "sagittal"))
    ckpt = micro_checkpoint(root / "m.pt", "axial")
    bid = extract(path, ckpt, "axial", (50, 10), ("mid_2", "mid_0"), progress=False)["backbone"]
    features_only = str(root / "features_only.zarr")
    import shutil

    shutil.copytree(path, features_only)
    make_personas(path, ckpt, "axial", grid=2, steps=1, jumps=1, progress=False, warn=lambda _: None)
    settings = extract_radiomics(path, "axial", families=("first_order",), progress=False)["settings"]
    return {"path": path, "features_only": features_only, "backbone": bid, "settings": settings}


def catalog() -> pd.DataFrame:
    ids = [f"s{i}-{p}" for p in ("axial", "sagittal") for i in range(N)]
    return pd.DataFrame({"series_id": ids, "plane": [i.split("-")[1] for i in ids], "ACL": np.arange(len(ids)) % 2, "age": 30.0 + np.arange(len(ids)),
                         "split": "test", "path": "x"})


def test_the_tree_holds_every_stored_kind_lazily_with_sorted_labels_and_the_catalog(store):
    bid, sid = store["backbone"], store["settings"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete store opens without a warning
        tree = orthodiff.open_store(store["path"], catalog=catalog())
    paths = sorted(node.path for node in tree.subtree if node.has_data)
    assert paths == ["/features/" + bid + "/axial", f"/personas/{bid}/axial", f"/radiomics/{sid}/axial", "/volumes"]
    assert tree.attrs["incomplete"] == []
    for node in tree.subtree:  # lazy: every array is Dask-backed until the caller loads it
        assert all(v.chunks is not None for v in node.data_vars.values()), node.path

    features = tree[f"features/{bid}/axial"].to_dataset()
    plain = xr.open_zarr(store["path"], group=f"features/{bid}/axial")  # as stored: in the order requested
    assert plain.timestep.values.tolist() == [50, 10] and plain.block.values.tolist() == ["mid_2", "mid_0"]
    assert features.timestep.values.tolist() == [10, 50] and features.block.values.tolist() == ["mid_0", "mid_2"]
    np.testing.assert_array_equal(features.gap.sel(timestep=50, block="mid_2").values,
                                  plain.gap.sel(timestep=50, block="mid_2").values)
    radiomics = tree[f"radiomics/{sid}/axial"].to_dataset()
    for node in (features, radiomics, tree[f"personas/{bid}/axial"].to_dataset()):
        for dim in set(node.dims) & set(node.indexes) - {"series", "axis"}:
            assert node.indexes[dim].is_monotonic_increasing and node.indexes[dim].is_unique, dim
    assert features.axis.values.tolist() == ["slice", "row", "column"]  # the geometric order, not sorted

    expected = catalog().set_index("series_id")
    for key in ("volumes", f"features/{bid}/axial", f"personas/{bid}/axial", f"radiomics/{sid}/axial"):
        ds = tree[key].to_dataset()
        assert "path" not in ds.coords, key
        for column in ("ACL", "age") if key == "volumes" else ("ACL", "age", "split"):
            np.testing.assert_array_equal(ds[column].values, expected.loc[ds.series.values, column].to_numpy(), err_msg=key)
    assert set(tree["volumes"].split.values) == {"train", "val"}  # a coordinate the store holds is kept (ingest's split)
    assert tree["volumes"].sizes["series"] == 2 * N and set(tree["volumes"].plane.values) == {"axial", "sagittal"}

    assert tree[f"features/{bid}"].attrs["backbone_id"] == bid and tree[f"features/{bid}"].attrs["preset"] == "demo"
    assert tree[f"personas/{bid}/axial"].attrs["roi"] == "box" and tree[f"personas/{bid}/axial"].attrs["grid"] == 2
    assert tree[f"radiomics/{sid}/axial"].attrs["settings_id"] == sid


def test_the_kind_readers_are_views_on_the_tree_nodes(store):
    from orthodiff.personas.reader import open_personas
    from orthodiff.radiomics.reader import open_radiomics

    bid, sid = store["backbone"], store["settings"]
    tree = orthodiff.open_store(store["path"])
    personas = open_personas(store["path"], "axial")
    node = tree[f"personas/{bid}/axial"].to_dataset()
    for name in ("persona", "mask"):  # open_personas adds the volume and its structure mask beside them
        xr.testing.assert_equal(personas[name].reset_coords(drop=True), node[name].reset_coords(drop=True))
    assert personas.attrs == node.attrs
    radiomics = open_radiomics(store["path"])  # loaded, with `plane`, features in the writer's order
    node = tree[f"radiomics/{sid}/axial"].to_dataset()
    xr.testing.assert_equal(radiomics.drop_vars("plane").sortby("feature").value, node.value.load())
    assert radiomics.roi_name.dims == ("roi",)


def test_a_store_without_personas_or_radiomics_gives_a_tree_without_them(store, tmp_path):
    tree = orthodiff.open_store(store["features_only"])
    assert sorted(tree.children) == ["features", "volumes"]
    assert list(plane_nodes(tree)) == ["axial"]
    axial = catalog().iloc[:N]
    opened = plane_features(tree["features"], axial)["axial"]  # the heads take the tree's features node
    xr.testing.assert_identical(opened, plane_features(store["features_only"], axial)["axial"])
    volumes_only = make_volume_store(tmp_path / "v.zarr", n=2, size=8)
    tree = orthodiff.open_store(volumes_only)
    assert list(tree.children) == ["volumes"]
    with pytest.raises(OrthodiffError, match="no features in this store"):
        plane_nodes(tree)


def test_the_heads_inputs_come_from_the_tree_and_its_catalog(store):
    """`FusionData.from_tree`: the catalog `open_store` joined is read back from the series
    coordinates (the store's identity, the catalog's labels and split); a given catalog keeps
    its rows, planes without features are left out, and the split fingerprint is the whole
    catalog's."""
    from orthodiff.catalogs.cohort import split_fingerprint
    from orthodiff.heads.protocol import FusionData

    joined = orthodiff.open_store(store["features_only"], catalog=catalog())
    data = FusionData.from_tree(joined)
    axial = catalog().iloc[:N]
    stored = joined[f"features/{store['backbone']}/axial"]
    assert list(data.features) == ["axial"] and data.series.tolist() == stored.series.values.tolist()
    assert data.catalog["case_id"].tolist() == stored.case_id.values.tolist()  # the store's identity
    np.testing.assert_array_equal(data.labels(["ACL"])["ACL"].to_numpy(), axial.set_index("series_id").loc[data.series, "ACL"])
    assert "path" not in data.catalog.columns and set(data.catalog["split"]) == {"test"}
    given = catalog().assign(case_id=lambda df: df.series_id, patient_id=lambda df: df.series_id)
    with pytest.raises(OrthodiffError, match="no sagittal features in the store, but the catalog has 3 sagittal series"):
        FusionData.from_tree(joined, given, source="s.zarr")
    data = FusionData.from_tree(joined, given, planes=["axial"])
    pd.testing.assert_frame_equal(data.catalog, given.iloc[:N])  # the catalog's rows, as given
    assert data.split_fingerprint == split_fingerprint(given) != split_fingerprint(given.iloc[:N])
    with pytest.raises(OrthodiffError, match="no catalog joined to the features"):
        FusionData.from_tree(orthodiff.open_store(store["features_only"]))


def test_parts_whose_creation_was_cut_short_are_named_and_left_out(store, tmp_path, monkeypatch):
    """A sagittal feature plane and a radiomics group, each killed after its group and before
    its arrays: the rest of the tree opens, the root's `incomplete` names both, each in a warning."""
    import shutil

    from orthodiff.featurestore import features
    from orthodiff.radiomics.store import extract_radiomics

    path = str(shutil.copytree(store["path"], tmp_path / "s.zarr"))

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(features, "ensure_arrays", killed)
    with pytest.raises(RuntimeError):
        extract(path, micro_checkpoint(tmp_path / "sag.pt", "sagittal"), "sagittal", (10,), ("mid_0",), progress=False)
    monkeypatch.setattr(series_groups, "ensure_arrays", killed)
    with pytest.raises(RuntimeError):
        extract_radiomics(path, "sagittal", sources=("image",), families=("first_order",), grid=1, progress=False)
    monkeypatch.undo()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tree = orthodiff.open_store(path)
    assert [(w.category, "rerun `orthodiff extract`" in str(w.message), "rerun `orthodiff radiomics --plane sagittal`"
             in str(w.message)) for w in caught] == [(IncompleteFeatures, True, False), (IncompleteGroups, False, True)]
    assert [p.split("/")[0] + "/" + p.rsplit("/", 1)[1] for p in tree.attrs["incomplete"]] == \
        ["features/sagittal", "radiomics/sagittal"]
    held = {node.path.lstrip("/") for node in tree.subtree}
    assert not held & set(tree.attrs["incomplete"]) and f"radiomics/{store['settings']}/axial" in held
    assert list(plane_nodes(tree)) == ["axial"]
