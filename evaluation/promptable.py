"""Promptable foundation models (SAM, MedSAM, SAM2) segmenting each structure slice by
slice from a box prompt, with the paper's pre- and post-processing.

Preprocessing (the paper's, each step an option): clip to the 1st-99th percentile of the
volume's non-zero voxels, scale to uint8, resize each slice to 1024 x 1024 by cubic spline,
repeat to three channels. Post-processing: a structure's logits above 0
(sigmoid 0.5) are its mask, where structures overlap the larger logit wins, and connected
components smaller than `min_size` pixels are removed. Prompts: the tight box of each
structure on each slice of a reference mask, optionally shifted by up to N pixels per
corner, or of another model's masks (e.g. the diffusion head's coarse `segment predict`
output), so no reference is needed at inference.

SAM and MedSAM come from the `segment-anything` package. Its top-level module imports
torchvision (for the `SamPredictor` resizing helpers) which may be absent or built for
another torch; only its `modeling` package (pure torch) is needed here, so when the
top-level import fails it is loaded on its own (`sam_modeling`). SAM2 needs the `sam2`
package and hydra, but not torchvision: only `sam2`'s image predictor imports it, and
`Sam2BoxPredictor` does its work without it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from orthodiff.errors import OrthodiffError
from orthodiff.files import read_weights, series_file

SIZE = 1024
# (embed dim, depth, heads, global attention blocks, prompt dim, decoder MLP, decoder heads)
SAM_SIZES = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11), 256, 2048, 8),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23), 256, 2048, 8),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31), 256, 2048, 8),
    "tiny": (32, 2, 2, (), 32, 64, 2),  # windowed attention only: for tests and quick checks, never a published one
}


def sam_modeling():
    """`segment_anything.modeling`, without the package's torchvision-bound top level if needed."""
    try:
        return importlib.import_module("segment_anything.modeling")
    except ImportError as err:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None:
            raise OrthodiffError("SAM and MedSAM need the segment-anything package: pip install 'orthodiff[sam]'") from err
        sys.modules.pop("segment_anything", None)
        package = types.ModuleType("segment_anything")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["segment_anything"] = package
        return importlib.import_module("segment_anything.modeling")


def build_sam(size: str = "vit_b", checkpoint=None, medsam: bool = False):
    """A SAM of `size` from the package's modules, weights from `checkpoint` (a state dict
    file, read with weights_only) or random. MedSAM takes images scaled to [0, 1]."""
    if size not in SAM_SIZES:
        raise OrthodiffError(f"unknown SAM size {size!r}; choose one of {', '.join(SAM_SIZES)}")
    m = sam_modeling()
    dim, depth, heads, global_attn, prompt_dim, mlp, dec_heads = SAM_SIZES[size]
    grid = SIZE // 16
    sam = m.Sam(
        image_encoder=m.ImageEncoderViT(depth=depth, embed_dim=dim, img_size=SIZE, mlp_ratio=4,
                                        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=16,
                                        qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn, window_size=14,
                                        out_chans=prompt_dim),
        prompt_encoder=m.PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                       input_image_size=(SIZE, SIZE), mask_in_chans=16),
        mask_decoder=m.MaskDecoder(num_multimask_outputs=3,
                                   transformer=m.TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=mlp, num_heads=dec_heads),
                                   transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=prompt_dim),
        pixel_mean=[0.0, 0.0, 0.0] if medsam else [123.675, 116.28, 103.53],
        pixel_std=[255.0, 255.0, 255.0] if medsam else [58.395, 57.12, 57.375],
    )
    if checkpoint is not None:
        state = read_weights(checkpoint, f"{'MedSAM' if medsam else 'SAM'} checkpoint",
                             "pass the published weights file (a state dict; nothing is downloaded)")
        try:
            sam.load_state_dict(state)
        except RuntimeError as err:
            raise OrthodiffError(f"{checkpoint}: not a SAM {size} state dict ({str(err).splitlines()[0]}); pass --size of the checkpoint") from None
    return sam.eval()


class SamBoxPredictor:
    """Logits of a SAM-format model for box prompts on one preprocessed slice."""

    def __init__(self, sam, device=None):
        self.sam, self.device = sam, device

    @torch.no_grad()
    def __call__(self, image: np.ndarray, boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """(3, 1024, 1024) uint8 image, (n, 4) xyxy boxes in 1024 pixels -> (n, *shape) logits."""
        device = self.device or next(self.sam.parameters()).device
        x = self.sam.preprocess(torch.as_tensor(image, dtype=torch.float32, device=device)[None])
        embedding = self.sam.image_encoder(x)
        sparse, dense = self.sam.prompt_encoder(points=None, boxes=torch.as_tensor(boxes, dtype=torch.float32, device=device),
                                                masks=None)
        low, _ = self.sam.mask_decoder(image_embeddings=embedding, image_pe=self.sam.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
        return self.sam.postprocess_masks(low, (SIZE, SIZE), shape)[:, 0].float().cpu().numpy()


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # SAM2's input normalisation


def build_sam2_model(config: str, checkpoint=None, device=None, overrides=()):
    """A SAM2 of the `sam2` package's `config` (e.g. configs/sam2.1/sam2.1_hiera_t.yaml) with
    weights from `checkpoint` or random; `overrides` are hydra overrides (tests shrink it)."""
    try:
        from sam2.build_sam import build_sam2
    except ImportError as err:
        raise OrthodiffError(f"SAM2 needs the sam2 package and hydra ({err}): pip install 'orthodiff[sam2]' and then "
                             "SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation sam2 (its metadata asks for "
                             "torchvision, which SAM2's model does not use)") from None
    try:
        return build_sam2(config, str(checkpoint) if checkpoint else None, device=device or "cpu",
                          hydra_overrides_extra=list(overrides))
    except Exception as err:  # hydra's MissingConfigException, a checkpoint of another size (RuntimeError)
        raise OrthodiffError(f"SAM2 config {config!r} with checkpoint {checkpoint}: {str(err).splitlines()[0]}") from None


class Sam2BoxPredictor:
    """Logits of a SAM2 model for box prompts on one preprocessed slice.

    Runs the model's image encoder, prompt encoder and mask decoder directly, as the `sam2`
    package's `SAM2ImagePredictor` does, but without it: that class imports torchvision (for
    three tensor transforms) whose PyPI wheels need the CUDA build of torch, while the model
    itself is pure torch. The transforms are redone here with torch: scale to [0, 1],
    resize to the model's image size, ImageNet mean/std."""

    def __init__(self, model, device=None):
        self.model, self.device = model, device

    @torch.no_grad()
    def __call__(self, image: np.ndarray, boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """(3, 1024, 1024) uint8 image, (n, 4) xyxy boxes in 1024 pixels -> (n, *shape) logits."""
        model = self.model
        device = self.device or next(model.parameters()).device
        size = model.image_size
        x = torch.as_tensor(image, dtype=torch.float32, device=device)[None] / 255
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) if size != SIZE else x
        x = (x - torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]) / torch.tensor(IMAGENET_STD, device=device)[:, None, None]
        _, feats, _, sizes = model._prepare_backbone_features(model.forward_image(x))
        if model.directly_add_no_mem_embed:  # how SAM2 marks a frame without memory
            feats[-1] = feats[-1] + model.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(1, -1, *hw) for f, hw in zip(feats, sizes)]  # (HW, B, C) -> (B, C, H, W)
        corners = torch.as_tensor(boxes, dtype=torch.float32, device=device).reshape(-1, 2, 2) * (size / SIZE)
        labels = torch.tensor([[2, 3]], dtype=torch.int, device=device).repeat(len(corners), 1)  # top-left, bottom-right
        sparse, dense = model.sam_prompt_encoder(points=(corners, labels), boxes=None, masks=None)
        low, *_ = model.sam_mask_decoder(image_embeddings=maps[-1], image_pe=model.sam_prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=False, repeat_image=len(corners) > 1, high_res_features=maps[:-1])
        return F.interpolate(low, size=shape, mode="bilinear", align_corners=False)[:, 0].float().cpu().numpy()


WINDOWS = ("volume", "slice")  # where the 1st-99th percentile window is taken (options.PromptWindow)
INTERPOLATIONS = {"cubic": 3, "linear": 1}  # spline order of the resize to 1024 (options.Interpolation)


def intensity_windows(image: np.ndarray, window: str = "volume") -> np.ndarray:
    """(slices, 2) intensity window of each slice of a (slices, H, W) volume: the 1st and
    99th percentiles of the volume's non-zero voxels (`volume`, the paper; all voxels if
    none is non-zero) or of each slice's pixels (`slice`)."""
    image = np.asarray(image, float)
    if window == "slice":
        return np.percentile(image.reshape(len(image), -1), [1, 99], axis=1).T
    if window != "volume":
        raise OrthodiffError(f"unknown intensity window {window!r}; choose one of {', '.join(WINDOWS)}")
    values = image[image != 0] if (image != 0).any() else image.ravel()
    return np.tile(np.percentile(values, [1, 99]), (len(image), 1))


def preprocess_slice(plane: np.ndarray, window=None, interpolation: str = "cubic") -> np.ndarray:
    """(H, W) slice -> (3, 1024, 1024) uint8: clip to `window` (low, high) (default: the
    slice's 1st-99th percentiles), scale to uint8, resize (cubic spline as the paper, or
    linear), repeat to three channels."""
    from scipy.ndimage import zoom

    if interpolation not in INTERPOLATIONS:
        raise OrthodiffError(f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
    low, high = np.percentile(plane, [1, 99]) if window is None else window
    scaled = (np.clip(plane, low, high) - low) / (high - low) if high > low else np.zeros_like(plane, dtype=float)
    image = np.round(scaled * 255)
    resized = zoom(image, (SIZE / image.shape[0], SIZE / image.shape[1]), order=INTERPOLATIONS[interpolation], mode="nearest",
                   grid_mode=True)  # pixel areas, not centres, span the image: as an image resize does
    return np.repeat(np.clip(np.round(resized), 0, 255).astype(np.uint8)[None], 3, axis=0)


def boxes_of(mask: np.ndarray, values) -> dict[tuple[int, int], np.ndarray]:
    """(slice, value) -> tight xyxy box in pixels (x: columns) of each structure on each slice."""
    out = {}
    for z, plane in enumerate(np.asarray(mask)):
        for value in values:
            rows, cols = np.nonzero(plane == value)
            if len(rows):
                out[(z, value)] = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], float)
    return out


def shift_boxes(boxes: dict, shift: int, shape: tuple[int, int], rng: np.random.Generator) -> dict:
    """Every corner moved by a uniform integer in [-shift, shift] pixels, kept in the image
    and at least one pixel wide."""
    h, w = shape
    out = {}
    for key, (x0, y0, x1, y1) in boxes.items():
        dx0, dy0, dx1, dy1 = rng.integers(-shift, shift + 1, 4)
        x0, x1 = np.clip(x0 + dx0, 0, w - 1), np.clip(x1 + dx1, 1, w)
        y0, y1 = np.clip(y0 + dy0, 0, h - 1), np.clip(y1 + dy1, 1, h)
        out[key] = np.array([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], float)
    return out


def postprocess(logits: np.ndarray, values, min_size: int) -> np.ndarray:
    """(n, H, W) logits of structures `values` -> (H, W) labels."""
    from scipy.ndimage import label

    best = logits.argmax(axis=0)
    labels = np.zeros(logits.shape[1:], np.uint8)
    for i, value in enumerate(values):
        keep = (best == i) & (logits[i] > 0)
        components, _ = label(keep)
        sizes = np.bincount(components.ravel())
        labels[keep & (sizes[components] >= min_size)] = value
    return labels


@dataclass
class PromptedSegmenter:
    """Slice-by-slice box-prompted segmentation of a series with `predictor`."""

    predictor: object
    min_size: int = 20
    window: str = "volume"
    interpolation: str = "cubic"

    def segment(self, image: np.ndarray, boxes: dict, progress=None) -> np.ndarray:
        """(slices, H, W) image, (slice, value) -> xyxy box in pixels -> (slices, H, W) labels."""
        h, w = image.shape[1:]
        scale = np.array([SIZE / w, SIZE / h, SIZE / w, SIZE / h])
        out = np.zeros(image.shape, np.uint8)
        windows = intensity_windows(image, self.window)
        for z in range(image.shape[0]):
            keys = sorted(k for k in boxes if k[0] == z)
            if keys:
                x = preprocess_slice(image[z], windows[z], self.interpolation)
                logits = self.predictor(x, np.stack([boxes[k] for k in keys]) * scale, (h, w))
                out[z] = postprocess(logits, [k[1] for k in keys], self.min_size)
            if progress:
                progress()
        return out


def run_prompt(catalog_path, out, checkpoint=None, model="sam", size="vit_b", prompts="reference", prompt_masks=None,
               shift=0, split="test", min_size=20, sam2_config=None, seed=0, device=None, progress=None, predictor=None,
               finetune_epochs=0, finetune_encoder=False, lr=1e-4, sam=None, plane=None, window="volume",
               interpolation="cubic", recipe="paper", train_shift=0, train_subjects=0, mix=(), amp=None,
               finetuned=None) -> int:
    """Segment every series of `split` that has a reference mask (its grid and the series
    to evaluate) with box prompts from the reference (`prompts="reference"`) or from
    `prompt_masks` (a `segment predict` run or mask folder, `prompts="masks"`); write
    `out/masks/<series_id>.nii.gz` (finished series are kept on a rerun) and `run.json`.
    With `finetune_epochs`, a SAM/MedSAM's mask decoder (and with `finetune_encoder` its
    image encoder) is first fine-tuned on the `train` split's reference masks and saved as
    `out/sam_finetuned.pt` (or `finetuned`, a file several runs share; reused on a rerun),
    under mixed precision `amp` (`training.amp_settings`: None is on for CUDA, the paper's).
    `sam` (a built model) or `predictor` replaces the checkpoint (tests). Returns the number
    of series written."""
    from pathlib import Path

    from orthodiff.catalogs.cohort import resolve_path
    from orthodiff.catalogs.readers import read_series
    from orthodiff.evaluation.inputs import check_complete, load_mask, model_of, read_series as read_reference
    from orthodiff.evaluation.inputs import reference_rows
    from orthodiff.outputs import write_mask, write_run

    out = Path(out)
    if prompts not in ("reference", "masks"):
        raise OrthodiffError(f"unknown prompt source {prompts!r}; choose reference or masks")
    if prompts == "masks" and prompt_masks is None:
        raise OrthodiffError("--prompts masks needs --prompt-masks (a segment predict run or folder of masks)")
    rows, structure_set = reference_rows(catalog_path, split, plane)
    source = model_of(prompt_masks) if prompts == "masks" else None
    if source:
        check_complete(source, rows["series_id"].tolist())
    if predictor is None:
        if model == "sam2":
            if not sam2_config:
                raise OrthodiffError("SAM2 needs --sam2-config, the sam2 package's config of the checkpoint (e.g. configs/sam2.1/sam2.1_hiera_b+.yaml)")
            predictor = Sam2BoxPredictor(build_sam2_model(sam2_config, checkpoint, device))
        elif model in ("sam", "medsam"):
            if checkpoint is None and sam is None:
                raise OrthodiffError(f"{model} needs --checkpoint, the published weights file (nothing is downloaded)")
            sam = (sam or build_sam(size, checkpoint, medsam=model == "medsam")).to(device or "cpu")
            if finetune_epochs:
                _finetuned(sam, Path(finetuned or out / "sam_finetuned.pt"), catalog_path, structure_set, finetune_epochs,
                           finetune_encoder, lr, seed, progress, window, interpolation, recipe, train_shift, train_subjects,
                           mix, amp)
            predictor = SamBoxPredictor(sam)
        else:
            raise OrthodiffError(f"unknown promptable model {model!r}; choose sam, medsam or sam2")
    segmenter = PromptedSegmenter(predictor, min_size, window, interpolation)
    written = 0
    for i, row in enumerate(rows.itertuples(index=False)):
        target = series_file(out / "masks", row.series_id)
        if target.is_file():
            continue
        series = read_reference(row, catalog_path, structure_set)
        image = read_series(resolve_path(catalog_path, row.path)).data
        prompt = series.reference if source is None else load_mask(series_file(source.masks, row.series_id), series.shape,
                                                                    series.affine, structure_set)
        boxes = boxes_of(prompt, structure_set.values)
        if shift:
            boxes = shift_boxes(boxes, shift, image.shape[1:], np.random.default_rng((seed, i)))  # same on a rerun
        write_mask(target, segmenter.segment(image, boxes, progress), series.affine)
        written += 1
    write_run({"kind": "prompt_predict", "model": model, "size": size, "checkpoint": str(checkpoint) if checkpoint else None,
                "prompts": prompts, "prompt_masks": str(prompt_masks) if prompt_masks else None, "shift": shift,
                "split": split, "min_size": min_size, "series": len(rows), "finetune_epochs": finetune_epochs,
                "finetune_encoder": finetune_encoder, "window": window, "interpolation": interpolation,
                "recipe": recipe, "train_shift": train_shift, "train_subjects": train_subjects,
                "mix": [str(m) for m in mix], "amp": amp},
               out)
    return written


def training_pairs(sam, rows, catalog_path, structure_set, encoder: bool = False, window="volume", interpolation="cubic"):
    """(inputs, boxes, targets) of every (slice, structure) of `rows`' reference masks:
    inputs are the slices' image embeddings (frozen encoder) or preprocessed images,
    boxes in 1024 pixels, targets the structure masks at the decoder's 256 x 256."""
    from orthodiff.catalogs.cohort import resolve_path
    from orthodiff.catalogs.readers import read_series
    from orthodiff.evaluation.inputs import read_series as read_reference

    low = SIZE // 4
    device = next(sam.parameters()).device
    inputs, boxes, targets = [], [], []
    for row in rows.itertuples(index=False):
        reference = read_reference(row, catalog_path, structure_set).reference
        image = read_series(resolve_path(catalog_path, row.path)).data
        h, w = image.shape[1:]
        scale = np.array([SIZE / w, SIZE / h, SIZE / w, SIZE / h])
        prompts = boxes_of(reference, structure_set.values)
        windows = intensity_windows(image, window)
        for z in sorted({z for z, _ in prompts}):
            x = torch.as_tensor(preprocess_slice(image[z], windows[z], interpolation))[None]
            if not encoder:
                with torch.no_grad():
                    x = sam.image_encoder(sam.preprocess(x.float().to(device))).cpu()
            for (_, value), box in sorted((k, v) for k, v in prompts.items() if k[0] == z):
                inputs.append(x)
                boxes.append(box * scale)
                target = torch.as_tensor(reference[z] == value, dtype=torch.float32)[None, None]
                targets.append(F.interpolate(target, size=(low, low), mode="nearest")[0])
    return torch.cat(inputs), torch.as_tensor(np.stack(boxes), dtype=torch.float32), torch.stack(targets)


# The MSK evaluation paper's recipe: AdamW (lr 1e-4, weight decay 0.01), cosine annealing
# with warm restarts (its period is not given: 10 epochs here), early stopping after 10
# epochs without a 1e-4 fall of the validation loss, gradients clipped to norm 1 and
# accumulated over 4 batches of 2. `plain` is the earlier Adam + one cosine, batches of 4.
RECIPES = {
    "paper": {"optimizer": "adamw", "weight_decay": 0.01, "warm_restarts": 10, "patience": 10, "min_delta": 1e-4,
              "clip_norm": 1.0, "accumulate": 4, "batch_size": 2},
    "plain": {"optimizer": "adam", "weight_decay": 0.0, "warm_restarts": 0, "patience": 0, "min_delta": 0.0,
              "clip_norm": None, "accumulate": 1, "batch_size": 4},
}


def finetune_sam(sam, inputs, boxes, targets, encoder: bool = False, epochs: int = 5, lr: float = 1e-4,
                 random_state: int = 0, on_step=None, recipe: str = "paper", shift: int = 0, val=None, amp=None):
    """Fine-tune the mask decoder (and the image encoder with `encoder`: the paper's full
    versus partial fine-tuning) with Dice + BCE on box-prompted pairs from `training_pairs`,
    through the shared training loop with `recipe`'s settings (`RECIPES`). `shift` moves
    each training box corner by up to that many pixels (of 1024) per step, the paper's
    augmentation (0 or 20); `val` (pairs of the validation split) drives early stopping;
    `amp` is the loop's mixed precision (`training.amp_settings`; None: on for CUDA, the
    paper's, off on the CPU)."""
    from monai.losses import DiceLoss

    from orthodiff.training import train

    if recipe not in RECIPES:
        raise OrthodiffError(f"unknown fine-tuning recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    settings = dict(RECIPES[recipe])
    dice = DiceLoss(sigmoid=True)
    for p in sam.parameters():
        p.requires_grad_(False)
    for p in [*sam.mask_decoder.parameters(), *(sam.image_encoder.parameters() if encoder else [])]:
        p.requires_grad_(True)

    def forward(x, b):
        if shift and sam.training:
            b = (b + torch.randint(-shift, shift + 1, b.shape, device=b.device)).clamp(0, SIZE)
        embedding = sam.image_encoder(sam.preprocess(x.float())) if encoder else x
        out = []
        for i in range(len(b)):  # the decoder pairs one image with its prompts
            sparse, dense = sam.prompt_encoder(points=None, boxes=b[i : i + 1], masks=None)
            low, _ = sam.mask_decoder(image_embeddings=embedding[i : i + 1], image_pe=sam.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
            out.append(low[0])
        return torch.stack(out)

    def loss(output, y, w):
        return dice(output, y) + F.binary_cross_entropy_with_logits(output, y)

    validate = None
    if val is not None and len(val[0]):
        device = next(sam.parameters()).device
        val = [t.to(device) for t in val]

        @torch.no_grad()
        def validate():
            return float(loss(forward(val[0], val[1]), val[2], None))
    else:
        settings.update(patience=0)
    train(sam, [inputs.numpy(), boxes.numpy()], targets.numpy(), None, epochs=epochs, lr=lr, random_state=random_state,
          forward=forward, loss=loss, on_step=on_step, validate=validate, amp=amp, **settings)
    for p in sam.parameters():
        p.requires_grad_(True)
    return sam.eval()


def training_subjects(rows, limit: int, seed: int):
    """`rows` of at most `limit` subjects (0: all), the first of one seeded order of its
    patients, so smaller sets nest in larger ones (the paper's 5, 10, 20, 40, all)."""
    if not limit:
        return rows
    patients = np.sort(rows["patient_id"].unique())
    keep = patients[np.random.default_rng(seed).permutation(len(patients))[:limit]]
    return rows[rows["patient_id"].isin(keep)]


def _pairs_of(sam, catalogs, split, encoder, window, interpolation, limit=0, seed=0):
    """`training_pairs` of `split` over several catalogs (dataset mixing), each limited to
    `limit` subjects; None where no catalog has reference masks in `split`."""
    from orthodiff.evaluation.inputs import reference_rows

    parts = []
    for catalog in catalogs:
        try:
            rows, structure_set = reference_rows(catalog, split)
        except OrthodiffError:  # no series with masks in this split
            continue
        parts.append(training_pairs(sam, training_subjects(rows, limit, seed), catalog, structure_set, encoder, window,
                                    interpolation))
    return [torch.cat(t) for t in zip(*parts)] if parts else None


def _finetuned(sam, path, catalog_path, structure_set, epochs, encoder, lr, seed, progress, window="volume",
               interpolation="cubic", recipe="paper", shift=0, subjects=0, mix=(), amp=None) -> None:
    """Fine-tune `sam` in place on the train split of `catalog_path` and of the `mix`
    catalogs (each up to `subjects` subjects), early-stopped on their val splits where they
    have reference masks; or load the result of an earlier run."""
    from orthodiff.files import atomic_write

    if path.is_file():
        hint = "delete it to fine-tune again"
        try:
            sam.load_state_dict(read_weights(path, "fine-tuned SAM", hint))
        except RuntimeError as err:
            raise OrthodiffError(f"{path}: not this SAM's weights ({str(err).splitlines()[0]}); {hint}") from None
        return
    catalogs = [catalog_path, *mix]
    train_pairs = _pairs_of(sam, catalogs, "train", encoder, window, interpolation, subjects, seed)
    if train_pairs is None:
        raise OrthodiffError(f"{catalog_path}: no train series with a reference mask_path to fine-tune on")
    val = _pairs_of(sam, catalogs, "val", encoder, window, interpolation)
    finetune_sam(sam, *train_pairs, encoder, epochs, lr, random_state=seed, on_step=progress, recipe=recipe, shift=shift,
                 val=val, amp=amp)
    atomic_write(path, lambda tmp: torch.save(sam.state_dict(), tmp))
