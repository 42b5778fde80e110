"""Stored kinds sharded by series beside the features (personas, radiomics, and any later one):
one creation path, one completion record with a content digest, one check and one repair.

Such a kind lives at `<kind>/<id>/<plane>`: data arrays indexed by `series` first and cut into
objects of `SHARD_SERIES` series (one task owns whole objects), the series coordinates and
constant coordinates (ROI names, feature names). The group's attributes name every array it
must hold (`arrays`), written with the group itself, so a group whose creation was cut short
is recognised and finished by the next job (`ensure_arrays`), never half-used. Completion
records sit at `_records/<kind>/<id>/<plane>/<shard>.json` and carry the fingerprint of the
settings, the series count, the data arrays and their `content_digest`, so `store verify`
names a damaged shard of any kind without knowing what the kind computes.
"""

from __future__ import annotations

import warnings

import fsspec
import numpy as np
import xarray as xr
import zarr

from orthodiff.errors import OrthodiffError
from orthodiff.faults import fault
from orthodiff.featurestore.features import SHARD_SERIES, Records, _labels, content_digest, grow_series
from orthodiff.featurestore.store import complete, ensure_arrays, ensure_group, open_root

KINDS = {"personas": "persona", "radiomics": "radiomics"}  # top-level group -> the command that writes it


def series_specs() -> dict[str, dict]:
    """The series coordinates, `series` last: it is created after every other array."""
    on_series = {"shape": (0,), "chunks": (4096,), "dimension_names": ["series"]}
    return {**{name: dict(dtype=str, **on_series) for name in ("case_id", "patient_id")},
            "scan": dict(dtype="int16", **on_series), "series": dict(dtype=str, **on_series)}


def record_name(shard: int) -> str:
    return f"{shard:06d}.json"


def records(store: str, path: str) -> Records:
    return Records(store, *path.split("/"))


def shard_runs(ids: list) -> list[tuple[int, int, list]]:
    """(shard, first row, series ids) of every shard of `ids`."""
    return [(shard, start, ids[start:start + SHARD_SERIES]) for shard, start in enumerate(range(0, len(ids), SHARD_SERIES))]


def prepare_group(store: str, path: str, prov: dict, specs: dict[str, dict], series: list[dict],
                  data: tuple[str, ...], same: tuple[str, ...], point: str) -> zarr.Group:
    """Create the group at `path` (attributes `prov`, arrays `specs` ending with `series_specs()`)
    or finish and check the one there (its `same` attributes must equal `prov`'s), then grow it
    to `series`. Safe to kill at any step (fault points `<point>:group`, `<point>:<array>`)."""
    group, _ = ensure_group(open_root(store), path, attributes={**prov, "arrays": list(specs)})
    fault(f"{point}:group")
    have = dict(group.attrs)
    differ = [k for k in same if have.get(k) != prov.get(k)]
    if differ:
        raise OrthodiffError(f"{store}: {path} was made with other settings ({', '.join(differ)}: "
                             f"{[have.get(k) for k in differ]}); use another store or the same settings")
    ensure_arrays(group, specs, point)
    grow_series(group, series, data)
    return group


def write_shard(store: str, group: zarr.Group, path: str, shard: int, start: int, values: dict[str, np.ndarray],
                fingerprint: str, point: str) -> None:
    """Write one shard's data arrays whole, then its completion record with their digest."""
    stored = {}
    for name, value in values.items():
        stored[name] = np.asarray(value, dtype=group[name].dtype)
        group[name][start:start + len(stored[name])] = stored[name]
    fault(f"{point}:record")
    n = len(next(iter(stored.values())))
    records(store, path).write(record_name(shard), {"fingerprint": fingerprint, "series": n, "arrays": list(stored),
                                                    "digest": content_digest(*stored.values())})


def complete_rows(store: str, path: str, ids: list, fingerprint_of) -> np.ndarray:
    """Which rows of `ids` belong to a shard recorded complete with `fingerprint_of(run)`."""
    done = records(store, path).read()
    keep = np.zeros(len(ids), bool)
    for shard, start, run in shard_runs(ids):
        keep[start:start + len(run)] = done.get(record_name(shard), {}).get("fingerprint") == fingerprint_of(run)
    return keep


SERIES_COORDS = ("case_id", "patient_id", "scan", "roi_name", "reason")  # loaded when opened


class IncompleteGroups(UserWarning):
    """Some persona or radiomics groups of the store are still being created (or their job
    was interrupted): `open_store` leaves them out."""


def open_group(store: str, path: str, fingerprint_of) -> xr.Dataset:
    """The group at `path` as a Dask-backed Dataset (a chunk per shard of `SHARD_SERIES`
    series) of the rows whose shard is recorded complete
    (`fingerprint_of(provenance, run)` is what the record must carry), its small coordinates
    (`SERIES_COORDS`: series ids, ROI names, reason codes) loaded and its attributes (the
    provenance) as the Dataset's. The one opener of every series-sharded kind: `open_store`'s
    nodes and `open_personas` / `open_radiomics` are views on it."""
    prov = dict(open_root(store)[path].attrs)
    with warnings.catch_warnings():  # coordinates are stored in larger chunks; they are loaded below
        warnings.filterwarnings("ignore", category=UserWarning)
        ds = xr.open_zarr(str(store), group=path, consolidated=False, chunks={"series": SHARD_SERIES})
    keep = complete_rows(store, path, ds.series.values.tolist(), lambda run: fingerprint_of(prov, run))
    ds = ds.isel(series=np.flatnonzero(keep))
    ds = ds.assign_coords({c: ds[c].load() for c in SERIES_COORDS if c in ds.variables})
    ds.attrs = prov
    return ds


def group_nodes(store: str, root: zarr.Group, kind: str, fingerprint_of) -> tuple[dict[str, xr.Dataset], list[str]]:
    """Every `<kind>/<id>/<plane>` group of the store opened with `open_group` (an `<kind>/<id>`
    node carries that group's attributes), and the paths of the groups whose creation is not
    finished (left out, named in an `IncompleteGroups` warning)."""
    nodes, incomplete = {}, []
    for path in kind_groups(root):
        if not path.startswith(f"{kind}/"):
            continue
        if is_complete(root[path]):
            nodes.setdefault(path.rsplit("/", 1)[0], xr.Dataset(attrs=dict(root[path.rsplit("/", 1)[0]].attrs)))
            nodes[path] = open_group(store, path, fingerprint_of)
        else:
            incomplete.append(path)
    if incomplete:
        warnings.warn(f"{store}: {', '.join(incomplete)} not complete yet (a job is running or was interrupted; "
                      f"rerun `{_rerun(incomplete[0])}` to finish it): left out", IncompleteGroups, stacklevel=3)
    return nodes, incomplete


def kind_groups(root: zarr.Group) -> list[str]:
    """Paths `<kind>/<id>/<plane>` of every series-sharded group in the store."""
    return [f"{kind}/{gid}/{plane}" for kind in KINDS if kind in root
            for gid in sorted(root[kind].group_keys()) for plane in sorted(root[f"{kind}/{gid}"].group_keys())]


def is_complete(group: zarr.Group) -> bool:
    """Whether every array the group's attributes name exists (groups made before `arrays`
    was recorded: whether `series` exists, which their jobs created among the last)."""
    return complete(group, group.attrs.get("arrays") or ("series",))


def _rerun(path: str) -> str:
    return f"orthodiff {KINDS[path.split('/')[0]]} --plane {path.rsplit('/', 1)[1]}"


def check_group(store: str, root: zarr.Group, path: str) -> tuple[list[str], list[int]]:
    """(problems, damaged shards) of one group: creation, a record per shard, content digests."""
    group = root[path]
    if not is_complete(group):
        return [f"{path}: creation not finished (a job was interrupted; rerun `{_rerun(path)}`)"], []
    ids = _labels(group["series"])
    done = records(store, path).read()
    problems, damaged = [], []
    for shard, start, run in shard_runs(ids):
        unit = f"series {start}-{start + len(run) - 1}"
        record = done.get(record_name(shard))
        if record is None:
            problems.append(f"{path}: {unit} not complete (rerun `{_rerun(path)}`)")
            continue
        if record.get("series") != len(run):
            problems.append(f"{path}: {unit}: record covers {record.get('series')} series, not {len(run)}")
            continue
        if "digest" not in record:  # records written before digests: content not checked
            continue
        try:
            values = [group[name][start:start + len(run)] for name in record["arrays"]]
        except Exception as err:  # a damaged object fails to decode; the codec names why
            problems.append(f"{path}: {unit}: unreadable ({type(err).__name__}: {err})")
            damaged.append(shard)
            continue
        if content_digest(*values) != record["digest"]:
            problems.append(f"{path}: {unit}: content does not match its checksum")
            damaged.append(shard)
    if damaged:
        problems.append(f"{path}: `{_rerun(path)} --store STORE --repair` (with the settings it was made with) "
                        f"recomputes the {len(damaged)} damaged shard(s)")
    return problems, damaged


def repair_group(store: str, path: str) -> int:
    """Forget the damaged shards of `path` (record and data objects) so the job redoes them;
    returns how many. A damaged object is deleted rather than patched: it may not decode."""
    root = open_root(store)
    if path not in root or not is_complete(root[path]):
        return 0
    damaged = check_group(store, root, path)[1]
    fs, base = fsspec.core.url_to_fs(str(store))
    done = records(store, path)
    arrays = {name for record in done.read().values() for name in record.get("arrays", ())}
    for shard in damaged:
        done.remove(record_name(shard))
        for name in arrays:
            key = f"{base.rstrip('/')}/{path}/{name}/c/{shard}" + "/0" * (root[path][name].ndim - 1)
            if fs.exists(key):
                fs.rm(key)
    return len(damaged)


def info_rows(store: str, root: zarr.Group, disk_bytes) -> list[dict]:
    """`store info` rows of every series-sharded group: series complete/total and size."""
    rows = []
    for path in kind_groups(root):
        kind, gid, plane = path.split("/")
        group = root[path]
        row = {"group": f"{kind}/{gid}", "plane": plane, "timesteps": "", "blocks": "",
               "MiB": disk_bytes(store, path) / 2**20, "ratio": np.nan}
        if not is_complete(group):
            rows.append({**row, "series": "being created"})
            continue
        ids = _labels(group["series"])
        done = records(store, path).read()
        finished = sum(len(run) for shard, _, run in shard_runs(ids)
                       if done.get(record_name(shard), {}).get("series") == len(run))
        rows.append({**row, "series": f"{finished}/{len(ids)}"})
    return rows
