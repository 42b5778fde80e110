"""Estimators on whole volumes, scikit-learn style: Stage I fine-tuning, baselines, segmentation.

``X`` is a volumes DataArray ``(series, z, y, x)`` as ``open_volumes`` gives it (lazy is
fine: rows are streamed in blocks of ``block_rows`` series); its ``series`` coordinate
keys the diffusion noise, so a series is noised the same way here and in ``extract``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from orthodiff.backbone import DiffusionUNet, UNetConfig, load_backbone
from orthodiff.backbone.diffusion import noise_key
from orthodiff.devices import resolve_device
from orthodiff.errors import OrthodiffError
from orthodiff.heads.estimator import MultiLabelClassifier
from orthodiff.supervised.networks import EncoderClassifier, classifier, segmenter
from orthodiff.training import apply, seeded, train


def _keys(X, seed: int, timestep: int) -> np.ndarray:
    return np.array([noise_key(seed, str(s), timestep) for s in X["series"].to_numpy()], dtype=np.int64)


def encoder_head_groups(net: torch.nn.Module, encoder_lr: float, lr: float) -> list[dict]:
    """The pretrained encoder at ``encoder_lr``; every other trainable parameter (new heads) at ``lr``."""
    encoder = getattr(net, "encoder", None)
    pretrained = {id(p) for p in encoder.unet.encoder_parameters()} if encoder is not None else set()
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in pretrained]
    groups = [{"params": [p for p in net.parameters() if id(p) in pretrained], "lr": encoder_lr}, {"params": rest, "lr": lr}]
    return [g for g in groups if g["params"]]


class _VolumeEstimator:
    model: str
    backbone: str | None
    timestep: int
    noise_seed: int
    random_state: int
    block_rows: int
    device: str | None

    def _unet(self, image_size: int) -> DiffusionUNet | None:
        """The pretrained backbone (diffusion models only), checked against the volumes' size."""
        if not self.backbone or self.model not in ("finetune", "diffusion"):
            return None
        unet = load_backbone(self.backbone, "cpu")
        if unet.config.image_size != image_size:
            raise OrthodiffError(f"{self.backbone}: backbone expects {unet.config.image_size} px volumes, "
                                 f"the store holds {image_size} px")
        return unet

    def _inputs(self, X) -> list:
        return [X.data if hasattr(X, "data") else X, _keys(X, self.noise_seed, self.timestep)]

    def _fit(self, net, X, y, loss=None, sample_weight=None, on_step=None):
        self.net_ = net.to(resolve_device(self.device))
        kwargs = {"loss": loss} if loss else {}
        groups = encoder_head_groups(self.net_, self.encoder_lr, self.lr) if self.model in ("finetune", "diffusion") else None
        train(self.net_, self._inputs(X), y, sample_weight, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
              random_state=self.random_state, block_rows=self.block_rows, param_groups=groups, on_step=on_step,
              **kwargs)
        return self


class VolumeClassifier(_VolumeEstimator, MultiLabelClassifier):
    """Multi-label diagnosis from volumes with weighted BCE; ``y`` (N, labels) 0/1 or 1-D
    binary (``heads.estimator``).

    ``model="finetune"``: Stage I fine-tuning of a pretrained ``backbone`` (checkpoint path):
    encoder and middle block up to ``block`` at ``encoder_lr`` with a ``pooling`` head at ``lr``,
    on inputs noised to ``timestep``; ``backbone_`` is the fine-tuned U-Net after ``fit``.
    Defaults are the paper's (head 5e-4, encoder 0.05 x 5e-4, 5 epochs, batch 10); inputs
    are noised with fresh noise every step while training (seeded by ``random_state``) and
    with each series' keyed noise otherwise. ``"unet_encoder"`` (same architecture, random
    init, ``mid_0`` with GAP as in the paper) and ``"resnet18"`` are baselines trained from
    scratch (all parameters at ``lr``).
    """

    def __init__(self, model: str = "finetune", backbone: str | None = None, timestep: int = 10, block: str = "mid_2",
                 pooling: str = "sap", epochs: int = 5, lr: float = 5e-4, encoder_lr: float = 2.5e-5, batch_size: int = 10,
                 block_rows: int = 32, noise_seed: int = 0, random_state: int = 0, device: str | None = None):
        self.model, self.backbone, self.timestep, self.block, self.pooling = model, backbone, timestep, block, pooling
        self.epochs, self.lr, self.encoder_lr, self.batch_size = epochs, lr, encoder_lr, batch_size
        self.block_rows, self.noise_seed, self.random_state, self.device = block_rows, noise_seed, random_state, device

    def fit(self, X, y, sample_weight=None, on_step=None) -> "VolumeClassifier":
        """``on_step()`` is called after every optimizer step (progress bars)."""
        y = self._encode_targets(y)
        size = X.shape[-1]
        net = seeded(self.random_state, lambda: classifier(
            self.model, y.shape[1], self._unet(size), self.timestep, self.block, self.pooling, size))
        if isinstance(net, EncoderClassifier):  # standardise pooled vectors with the starting features' statistics
            net.head.standardise_with(apply(lambda x, k: net.head.pooled(net.encoder(x, k)), self._inputs(X), self.block_rows))
        return self._fit(net, X, y, sample_weight=sample_weight, on_step=on_step)

    @property
    def backbone_(self) -> DiffusionUNet:
        return self.net_.encoder.unet

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self._layout(apply(self.net_, self._inputs(X), self.block_rows))

    def _positive_proba(self, X) -> np.ndarray:
        return expit(apply(self.net_, self._inputs(X), self.block_rows))


IGNORE = -1  # unannotated voxels of partially annotated masks (255 in uint8 masks)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's soft Dice: softmax probabilities and one-hot targets, ignored voxels
    zeroed, Dice per class over the whole batch (eps 1e-6), 1 - the mean over foreground
    classes. ``logits`` (B, C, *spatial), ``target`` (B, *spatial) class ids or IGNORE."""
    from monai.losses import DiceLoss

    valid = (target != IGNORE).unsqueeze(1)
    onehot = F.one_hot(target.clamp(min=0), logits.shape[1]).movedim(-1, 1)
    dice = DiceLoss(include_background=False, batch=True, smooth_nr=1e-6, smooth_dr=1e-6)
    return dice(logits.softmax(1) * valid, onehot * valid)


def segmentation_loss(logits: torch.Tensor, y: torch.Tensor, w=None) -> torch.Tensor:
    """0.2 x cross-entropy + soft Dice over foreground classes, label IGNORE left out of both."""
    target = y.long()
    target = target.masked_fill(target == 255, IGNORE)
    return 0.2 * F.cross_entropy(logits, target, ignore_index=IGNORE) + soft_dice_loss(logits, target)


class VolumeSegmenter(_VolumeEstimator, BaseEstimator):
    """Structure segmentation (``n_classes`` including background 0) with cross-entropy +
    soft Dice (``segmentation_loss``). ``model="diffusion"``: a pretrained ``backbone``'s
    encoder and middle block (at ``encoder_lr``) with the paper's light head on the middle block
    (``decoder="light"``) or orthodiff's skip-connection decoder (``"skip"``) (at
    ``lr``), on inputs noised to ``timestep``; ``"unet"`` and ``"unetr"``: MONAI
    baselines from scratch (all at ``lr``)."""

    def __init__(self, model: str = "diffusion", backbone: str | None = None, timestep: int = 10, block: str = "mid_2",
                 n_classes: int = 12, epochs: int = 30, lr: float = 1e-3, encoder_lr: float = 5e-5, batch_size: int = 10,
                 block_rows: int = 32, noise_seed: int = 0, random_state: int = 0, device: str | None = None,
                 decoder: str = "light", unetr_size: str = "paper"):
        self.model, self.backbone, self.timestep, self.block, self.n_classes = model, backbone, timestep, block, n_classes
        self.decoder, self.unetr_size = decoder, unetr_size
        self.epochs, self.lr, self.encoder_lr, self.batch_size = epochs, lr, encoder_lr, batch_size
        self.block_rows, self.noise_seed, self.random_state, self.device = block_rows, noise_seed, random_state, device

    def _build(self, image_size: int, unet: DiffusionUNet | None):
        return seeded(self.random_state, lambda: segmenter(
            self.model, self.n_classes, image_size, unet, self.timestep, self.block, self.decoder, self.unetr_size))

    def fit(self, X, masks, on_step=None) -> "VolumeSegmenter":
        """``masks`` (N, z, y, x) structure labels; ``on_step()`` after every optimizer step."""
        self.image_size_ = int(X.shape[-1])
        net = self._build(self.image_size_, self._unet(self.image_size_))
        return self._fit(net, X, masks, loss=segmentation_loss, on_step=on_step)

    def predict(self, X) -> np.ndarray:
        """Structure labels (N, z, y, x) uint8: the argmax over classes."""
        check_is_fitted(self)
        return apply(lambda x, k: self.net_(x, k).argmax(1).to(torch.uint8), self._inputs(X), self.block_rows)

    def state(self) -> dict:
        """Everything `from_state` needs (tensors and plain values: loads with weights_only)."""
        params = {k: getattr(self, k) for k in ("model", "timestep", "block", "n_classes", "noise_seed", "decoder", "unetr_size")}
        unet = self.net_.encoder.unet.config.to_dict() if hasattr(self.net_, "encoder") else None
        return {"params": params, "image_size": self.image_size_, "unet": unet,
                "state": {k: v.cpu() for k, v in self.net_.state_dict().items()}}

    @classmethod
    def from_state(cls, saved: dict, device: str | None = None) -> "VolumeSegmenter":
        # models saved before the light head existed used the skip decoder
        est = cls(**{"decoder": "skip", "unetr_size": "small", **saved["params"]}, device=device)
        unet = None
        if saved["unet"]:  # as trained: a full denoiser, or the encoder and middle block alone (`export-encoder`)
            decoder = any(".output_blocks." in f".{key}" for key in saved["state"])
            unet = DiffusionUNet(UNetConfig(**{**saved["unet"], "channel_mult": tuple(saved["unet"]["channel_mult"])}),
                                 decoder=decoder)
        est.image_size_ = saved["image_size"]
        est.net_ = est._build(est.image_size_, unet)
        est.net_.load_state_dict(saved["state"])
        est.net_.to(resolve_device(device)).eval()
        return est
