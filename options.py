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

from collections.abc import Callable, Iterable
from enum import StrEnum

from orthodiff.errors import OrthodiffError


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
Joint = _choices("Joint", "ankle knee shoulder", "A joint of the task catalog (catalogs.tasks.joints()).")
ImageFormat = _choices("ImageFormat", "nifti dicom", "The file format of synthesized series.")
JoinOn = _choices("JoinOn", "accession study-uid case-id", "What a label CSV's join column holds (catalogs.dicom_archive.JOIN_ON).")
OnError = _choices("OnError", "fail skip", "What ingestion does with a bad series.")
Dtype = _choices("Dtype", "float16 float32", "The stored dtype of activations.")
Roi = _choices("Roi", "box structures", "Where personas are inpainted (personas.store.ROI_KINDS).")
Decoder = _choices("Decoder", "light skip", "The segmentation decoder (supervised.networks.DECODERS).")
UnetrSize = _choices("UnetrSize", "paper small", "A UNETR size (supervised.networks.UNETR_SIZES).")
FingerprintTask = _choices("FingerprintTask", "abnormal acl meniscus", "A fingerprint target (heads.fingerprint_cohort.TARGETS).")
ClassifierModel = _choices("ClassifierModel", "resnet18 unet_encoder", "A from-scratch classifier architecture.")
SegmenterModel = _choices("SegmenterModel", "unet unetr", "A from-scratch segmentation architecture (MONAI).")
PromptModel = _choices("PromptModel", "sam medsam sam2", "A promptable segmentation model.")
Encoder = _choices("Encoder", "vit_b vit_l vit_h", "The SAM/MedSAM image encoder of a checkpoint.")
Discretisation = _choices("Discretisation", "fixed_bin_number fixed_bin_size",
                          "IBSI grey-level discretisation (radiomics.ibsi.DISCRETISATIONS).")
PromptSource = _choices("PromptSource", "reference masks", "Where box prompts come from.")
