"""Command-line values with one meaning everywhere: the choices, comma-separated lists and
subset sizes.

Choices are `StrEnum`s, so `--help` lists them and typer rejects other values before a
command runs; their option callback `plain` hands the command the member's plain string. Their
values are the library's own constants (`tests/test_cli_options.py` checks they agree); they
are spelled out here so this module stays a leaf that every command module can import.
Library functions take Python lists; the commands turn comma-separated option text into them
with `split_list`, so a bad item is named the same way by every command.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from enum import StrEnum

from typer.core import TyperGroup

from orthodiff.errors import OrthodiffError
from orthodiff.files import folder_lock


def split_list(text: str | None, option: str, cast: Callable = str, choices: Iterable[str] | None = None,
               expected: str | None = None) -> list:
    """The items of a comma-separated option value, stripped, empty items dropped, each passed
    through ``cast`` (``int`` for numbers); an item that ``cast`` rejects (``ValueError``) or
    that is not one of ``choices`` is an OrthodiffError naming ``option`` and what was
    ``expected``."""
    allowed = None if choices is None else [str(c) for c in choices]
    expected = expected or (f"one of {', '.join(allowed)}" if allowed else NAMES.get(cast, "valid"))
    out = []
    for item in (item.strip() for item in (text or "").split(",")):
        if not item:
            continue
        try:
            if allowed is not None and item not in allowed:
                raise ValueError(item)
            out.append(cast(item))
        except ValueError:
            raise OrthodiffError(f"{option} {text!r}: {item!r} is not {expected} (comma-separated)") from None
    return out


NAMES = {int: "an integer", float: "a number"}


def subset_sizes(text: str | None, option: str = "--subsets") -> list[int | str]:
    """Label-efficiency subsets: numbers of training patients and/or ``all``."""
    return split_list(text, option, lambda item: item if item == "all" else int(item), expected="an integer or 'all'")


def plain(value: StrEnum | None) -> str | None:
    """The option callback of every choice: the command receives the member's plain string,
    so what it saves (checkpoints read with ``weights_only=True``, Parquet, JSON) holds no
    Enum objects."""
    return None if value is None else str(value)


def choice(kind: type[StrEnum], value, name: str) -> StrEnum:
    """``value`` as a member of ``kind``; anything else is an OrthodiffError naming ``name``
    and the choices (library calls get the same message as typer gives on the command line)."""
    try:
        return kind(value)
    except ValueError:
        raise OrthodiffError(f"unknown {name} {value!r}: expected one of {[str(m) for m in kind]}") from None


class Pooling(StrEnum):
    """Pooling of a middle-block activation into one vector per series (``heads.pooling``)."""

    gap = "gap"
    glp = "glp"
    sap = "sap"

    @property
    def variable(self) -> str:
        """The stored variable it reads: GAP the pooled summaries, GLP and SAP the activations."""
        return "gap" if self is Pooling.gap else "activation"

    @property
    def trained(self) -> bool:
        """Whether pooling has weights to train (GLP, SAP): only then is a fitted probe worth keeping."""
        return self is not Pooling.gap

    @property
    def batched(self) -> bool:
        """Whether a sweep can train all (timestep, block) configurations at once (GAP, SAP)."""
        return self in (Pooling.gap, Pooling.sap)


class Method(StrEnum):
    """A fusion head (``heads.fusion``) or a comparator on the fused inputs (``heads.protocol``)."""

    concat = "concat"
    linear_concat = "linear_concat"
    linear_add = "linear_add"
    cross_attention = "cross_attention"
    mpae = "mpae"
    lightgbm = "lightgbm"
    logistic = "logistic"
    ehr_only = "ehr_only"

    @property
    def comparator(self) -> bool:
        """A baseline estimator rather than a ``FusionHead`` (LightGBM, logistic, EHR only)."""
        return self in (Method.lightgbm, Method.logistic, Method.ehr_only)

    @property
    def gated(self) -> bool:
        """MPAE: plane heads weighted by a learned gate (gate weights reported per label)."""
        return self is Method.mpae

    @property
    def combines_planes(self) -> bool:
        """Needs at least two planes: the gate and cross-attention weigh planes against each other."""
        return self in (Method.mpae, Method.cross_attention)


class Precision(StrEnum):
    """The network's compute precision (``backbone.precision``)."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def _choices(name: str, values: str, doc: str) -> type[StrEnum]:
    choice = StrEnum(name, [(v, v) for v in values.split()])
    choice.__doc__ = doc
    return choice


Plane = _choices("Plane", "sagittal coronal axial", "An acquisition plane (catalogs.tasks.PLANES).")
Preset = _choices("Preset", "paper small tiny demo", "A backbone architecture preset (backbone.unet.PRESETS).")
Joint = _choices("Joint", "ankle knee shoulder spine thigh", "A joint of the task catalog (catalogs.tasks.joints()).")
ImageFormat = _choices("ImageFormat", "nifti dicom", "The file format of synthesized series.")
JoinOn = _choices("JoinOn", "accession study-uid case-id", "What a label CSV's join column holds (catalogs.dicom_archive.JOIN_ON).")
OnError = _choices("OnError", "fail skip", "What ingestion does with a bad series.")
Dtype = _choices("Dtype", "float16 float32", "The stored dtype of activations.")
Roi = _choices("Roi", "box structures", "Where personas are inpainted (personas.store.plan).")
PersonaModel = _choices("PersonaModel", "repaint ddpm", "How personas are inpainted (personas.store.plan).")
Similarity = _choices("Similarity", "correlation mattes", "The affine registration's metric (personas.registration.SIMILARITIES).")
Decoder = _choices("Decoder", "light skip", "The segmentation decoder (supervised.networks.DECODERS).")
UnetrSize = _choices("UnetrSize", "paper small", "A UNETR size (supervised.networks.UNETR_SIZES).")
FingerprintTask = _choices("FingerprintTask", "abnormal acl meniscus", "A fingerprint target (heads.fingerprint_cohort.TARGETS).")
ClassifierModel = _choices("ClassifierModel", "resnet18 unet_encoder mrnet", "A from-scratch classifier architecture.")
SegmenterModel = _choices("SegmenterModel", "unet unetr", "A from-scratch segmentation architecture (MONAI).")
PromptModel = _choices("PromptModel", "sam medsam sam2", "A promptable segmentation model.")
Encoder = _choices("Encoder", "vit_b vit_l vit_h", "The SAM/MedSAM image encoder of a checkpoint.")
Discretisation = _choices("Discretisation", "fixed_bin_number fixed_bin_size",
                          "IBSI grey-level discretisation (radiomics.ibsi.DISCRETISATIONS).")
PromptSource = _choices("PromptSource", "reference masks", "Where box prompts come from.")


def _cores() -> int:
    return os.cpu_count() or 1


# The range of every numeric option, by name (one meaning per name on every command): values
# outside are refused by the parser, before any work starts. Upper bounds are far above any
# real use; they catch typos (`--bootstrap 1000000000`) that would run for ever or allocate
# terabytes. `cores` is this machine's CPU count (local processes; a cluster takes
# `--scheduler`).
LIMITS: dict[str, tuple[float, float | str, bool]] = {  # name -> (min, max, min excluded)
    "workers": (1, "cores", False), "threads": (1, "cores", False),
    "series_batch": (1, 4096, False), "batch": (1, 100_000, False), "batch_size": (1, 100_000, False),
    "epochs": (1, 100_000, False), "plane_epochs": (1, 100_000, False), "gate_epochs": (1, 100_000, False),
    "finetune_epochs": (0, 100_000, False), "steps": (0, 100_000_000, False),
    "lr": (0, 10, True), "head_lr": (0, 10, True), "plane_lr": (0, 10, True), "weight_decay": (0, 10, False),
    "bootstrap": (1, 100_000, False), "sampling_steps": (1, 1000, False), "jumps": (1, 100, False),
    "bins": (2, 1024, False), "size": (8, 1024, False), "ingest_size": (8, 1024, False),
    "cases": (1, 1_000_000, False), "seed": (0, 2**32 - 1, False), "min_size": (0, 10**6, False),
    "shift": (0, 1024, False), "central": (0, 10_000, False), "grid": (0, 3, False), "timestep": (0, 999, False),
    "every": (1, 100_000_000, False), "pretrain": (0, 100_000_000, False), "n": (1, 10_000, False),
    "permutations": (1, 1_000_000, False), "nsd_tolerance": (0, 100, False), "subset": (1, 10_000_000, False),
    "val": (0, 1, False), "test": (0, 1, False), "healthy_share": (0, 1, False), "examples": (0, 1000, False),
    "bin_width": (0, 1e9, True), "fold": (1, 2, False), "min_pixels": (0, 10**6, False), "min_voxels": (0, 10**9, False),
    "train_shift": (0, 1024, False), "train_subjects": (0, 10_000_000, False), "iterations": (1, 100_000, False),
}


def _in_range(name: str, previous: Callable | None) -> Callable:
    low, high, open_low = LIMITS[name]

    def check(ctx, param, value):
        top = _cores() if high == "cores" else high
        if value is not None and not isinstance(value, bool) and isinstance(value, (int, float)):
            if (value <= low if open_low else value < low) or value > top:
                left = f"{low} <" if open_low else f"{low} <="
                raise OrthodiffError(f"{param.opts[0]} {value}: outside {left} x <= {top}"
                                     + (" (this machine's cores)" if high == "cores" else ""))
        return previous(ctx, param, value) if previous else value

    check.orthodiff_range = True
    return check


def _locked(callback: Callable) -> Callable:
    def run(*args, **kwargs):
        if kwargs["out"] is None:  # an optional output folder left out
            return callback(*args, **kwargs)
        with folder_lock(kwargs["out"]):
            return callback(*args, **kwargs)

    run.orthodiff_lock = True
    return run


def bound(command) -> None:
    """Give every numeric option of `command` (and its subcommands) named in `LIMITS` its range
    check, and every command writing an output folder (`--out DIR`) that folder's lock."""
    for sub in getattr(command, "commands", {}).values():
        bound(sub)
    for param in command.params:
        if param.name in LIMITS and not getattr(param.callback, "orthodiff_range", False):
            param.callback = _in_range(param.name, param.callback)
        if (param.name == "out" and param.metavar == "DIR" and command.callback is not None
                and not getattr(command.callback, "orthodiff_lock", False)):
            command.callback = _locked(command.callback)


class BoundedGroup(TyperGroup):
    """The command group of `orthodiff`: numeric options are checked against `LIMITS` when
    parsed, and a command's output folder is locked while it runs (`files.folder_lock`)."""

    def main(self, *args, **kwargs):
        bound(self)
        return super().main(*args, **kwargs)
OverlapLevel = _choices("OverlapLevel", "slice series", "Where Dice and IoU are computed before the subject mean (evaluation.metrics.LEVELS).")


class IccForm(StrEnum):
    """An intraclass correlation form, Shrout & Fleiss (1979) names; McGraw & Wong (1996)
    call (2,*) absolute agreement A and (3,*) consistency C (evaluation.agreement.icc)."""

    ICC1 = "ICC(1,1)"
    ICC2 = "ICC(2,1)"
    ICC3 = "ICC(3,1)"
    ICC1k = "ICC(1,k)"
    ICC2k = "ICC(2,k)"
    ICC3k = "ICC(3,k)"
PromptWindow = _choices("PromptWindow", "volume slice", "Where a promptable model's 1st-99th percentile window is taken (evaluation.promptable.WINDOWS).")
Interpolation = _choices("Interpolation", "cubic linear", "How slices are resized for a promptable model (evaluation.promptable.INTERPOLATIONS).")
Recipe = _choices("Recipe", "paper plain", "A promptable model's fine-tuning recipe (evaluation.promptable.RECIPES).")
