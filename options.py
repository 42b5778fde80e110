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


def _choices(name: str, values: str, doc: str) -> type[StrEnum]:
    choice = StrEnum(name, [(v, v) for v in values.split()])
    choice.__doc__ = doc
    return choice


Plane = _choices("Plane", "sagittal coronal axial", "An acquisition plane (catalogs.tasks.PLANES).")
Pooling = _choices("Pooling", "gap glp sap", "Pooling of a middle-block activation (heads.pooling.POOLINGS).")
Method = _choices("Method", "concat linear_concat linear_add cross_attention mpae lightgbm logistic ehr_only",
                  "A fusion head or comparator (heads.fusion.METHODS and heads.protocol.COMPARATORS).")
Preset = _choices("Preset", "paper small tiny demo", "A backbone architecture preset (backbone.unet.PRESETS).")
Joint = _choices("Joint", "ankle knee shoulder", "A joint of the task catalog (catalogs.tasks.joints()).")
ImageFormat = _choices("ImageFormat", "nifti dicom", "The file format of synthesized series.")
JoinOn = _choices("JoinOn", "accession study-uid case-id", "What a label CSV's join column holds (catalogs.dicom_archive.JOIN_ON).")
OnError = _choices("OnError", "fail skip", "What ingestion does with a bad series.")
Dtype = _choices("Dtype", "float16 float32", "The stored dtype of activations.")
Precision = _choices("Precision", "fp32 bf16 fp16", "The network's compute precision (backbone.precision).")
Roi = _choices("Roi", "box structures", "Where personas are inpainted (personas.store.ROI_KINDS).")
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
