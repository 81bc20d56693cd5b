"""The inference settings of the two heads, resolved once from ``test_cfg``.

mmdet's single-stage instance segmentor hands one ``test_cfg`` to both the
box head and the mask head, so every key below is accepted by both; each
head resolves and validates its own and refuses keys that neither knows,
naming them. ``head.settings`` (:class:`HeadSettings`) is the resolved,
frozen object every reader uses: both predict halves, the test-time
augmentation, the export graph and the ONNX runtime. ``head.test_cfg``
stays the ConfigDict that mmdet's inherited code reads (its CondInst path:
``nms_pre``, ``score_thr``, ``min_bbox_size``, ``nms``, ``max_per_img``).

A default is written once, in ``BOX_DEFAULTS`` / ``MASK_DEFAULTS``.
"""
from dataclasses import dataclass
from typing import ClassVar, Optional

from .checks import check_choice
from .mask_paste import MAX_PASTE_ELEMENTS

__all__ = [
    'BOX_DEFAULTS', 'MASK_DEFAULTS', 'KNOWN_KEYS', 'CANDIDATE_RULES',
    'SCORE_TYPES', 'MASK_RESAMPLES', 'BoxInferenceSettings',
    'MaskInferenceSettings', 'HeadSettings', 'candidate_rule'
]

# which (location, class) pairs reach NMS, per level:
#   'mmdet'     σ(cls) > score_thr, top nms_pre by σ(cls), boxes clipped
#               to [0, w] x [0, h] (mmdet's CondInst path)
#   'adelaidet' σ(cls) σ(ctr) > score_thr, top nms_pre by σ(cls) σ(ctr),
#               boxes not clipped (AdelaiDet, THRESH_WITH_CTR=True)
#   'fcos_repo' σ(cls) > score_thr, top nms_pre by σ(cls) σ(ctr), boxes
#               clipped to [0, w - 1] x [0, h - 1] (the FCOS repo's
#               inference.py and clip_to_image)
# The NMS score is σ(cls) σ(ctr) (or its sqrt) in all three.
CANDIDATE_RULES = ('mmdet', 'adelaidet', 'fcos_repo')
# the detection score: σ(cls) σ(ctr) or its square root (AdelaiDet)
SCORE_TYPES = ('cls_ctr', 'sqrt_cls_ctr')
# how masks reach the output resolution: resample p (AdelaiDet's way),
# resample the embeddings and evaluate p at every output pixel, or resample
# log p inside each box's window of cells (the FCOS repo's way)
MASK_RESAMPLES = ('prob', 'embedding', 'log_prob')

# the box head's keys and their defaults
BOX_DEFAULTS = dict(
    # candidates score above this (the score per candidate_rule)
    score_thr=0.,
    # candidates kept per level before NMS, the best first (-1: all)
    nms_pre=-1,
    # boxes with a side <= this are dropped before NMS (-1: none)
    min_bbox_size=-1,
    # mmcv's batched_nms config, e.g. dict(type='nms', iou_threshold=0.6);
    # no default: NMS needs one (EmbedMaskTTAModel's tta_cfg.nms falls back
    # to IoU 0.5 without it)
    nms=None,
    # detections kept per image after NMS
    max_per_img=100,
    # one of SCORE_TYPES
    score_type='cls_ctr',
    # one of CANDIDATE_RULES; None: from thresh_with_ctr
    candidate_rule=None,
    # AdelaiDet's switch: True is candidate_rule='adelaidet', else 'mmdet';
    # set with candidate_rule, it must agree
    thresh_with_ctr=None,
)
# the mask head's keys and their defaults
MASK_DEFAULTS = dict(
    # a pixel is foreground when p > mask_thr, in (0, 1)
    mask_thr=0.5,
    # one of MASK_RESAMPLES
    mask_resample='prob',
    # 'log_prob': cells kept around each box (the FCOS repo's window)
    window_padding=2,
    # clear mask pixels farther than crop_padding x mask_out_stride (scaled
    # to the output) outside the box
    crop_to_box=False,
    crop_padding=2,
    # floats resampled per chunk of detections (see mask_paste)
    max_paste_elements=MAX_PASTE_ELEMENTS,
    # paste_masks' per-detection region path; None: on CPU only
    paste_regions=None,
)
KNOWN_KEYS = tuple(BOX_DEFAULTS) + tuple(MASK_DEFAULTS)


def _check_keys(test_cfg, owner: str) -> dict:
    """``test_cfg`` as a dict (None: empty), refusing unknown keys."""
    cfg = dict(test_cfg or {})
    unknown = [k for k in cfg if k not in KNOWN_KEYS]
    if unknown:
        raise ValueError(
            f'{owner}: test_cfg.{unknown[0]} is not an inference setting'
            + (f' (nor are {unknown[1:]})' if len(unknown) > 1 else '')
            + f'; the known keys (test_cfg goes to both heads) are '
            f'{KNOWN_KEYS}')
    return cfg


def candidate_rule(test_cfg) -> str:
    """The candidate rule of a test config: ``candidate_rule``, or from
    AdelaiDet's ``thresh_with_ctr`` (True: 'adelaidet', else 'mmdet').

    Raises:
        ValueError: an unknown rule, or ``thresh_with_ctr`` set against it.
    """
    test_cfg = test_cfg or {}
    with_ctr = test_cfg.get('thresh_with_ctr')
    rule = test_cfg.get('candidate_rule')
    if rule is None:
        return 'adelaidet' if with_ctr else 'mmdet'
    if rule not in CANDIDATE_RULES:
        raise ValueError(f'test_cfg.candidate_rule must be one of '
                         f'{CANDIDATE_RULES}, got {rule!r}')
    if with_ctr is not None and bool(with_ctr) != (rule == 'adelaidet'):
        raise ValueError(
            f'test_cfg.thresh_with_ctr={with_ctr!r} contradicts '
            f'candidate_rule={rule!r} (thresh_with_ctr=True is the '
            "'adelaidet' rule); drop thresh_with_ctr")
    return rule


@dataclass(frozen=True)
class BoxInferenceSettings:
    """The box head's resolved test settings (see ``BOX_DEFAULTS``);
    ``candidate_rule`` is resolved (``thresh_with_ctr`` folded in)."""
    score_thr: float
    nms_pre: int
    min_bbox_size: float
    nms: Optional[dict]
    max_per_img: int
    score_type: str
    candidate_rule: str

    OWNER: ClassVar[str] = 'EmbedMaskBboxHead'

    @classmethod
    def from_cfg(cls, test_cfg=None,
                 owner: Optional[str] = None) -> 'BoxInferenceSettings':
        """Resolves and validates a ``test_cfg`` (None: all defaults).

        Raises:
            ValueError: a key neither head knows, an unknown
                ``score_type`` or ``candidate_rule``, or
                ``thresh_with_ctr`` against ``candidate_rule``.
        """
        owner = owner or cls.OWNER
        cfg = _check_keys(test_cfg, owner)
        values = {k: cfg.get(k, default)
                  for k, default in BOX_DEFAULTS.items()}
        check_choice(owner, 'test_cfg.score_type', values['score_type'],
                     SCORE_TYPES)
        values['candidate_rule'] = candidate_rule(cfg)
        del values['thresh_with_ctr']
        if values['nms'] is not None:
            values['nms'] = dict(values['nms'])
        return cls(**values)


@dataclass(frozen=True)
class MaskInferenceSettings:
    """The mask head's resolved test settings (see ``MASK_DEFAULTS``)."""
    mask_thr: float
    mask_resample: str
    window_padding: int
    crop_to_box: bool
    crop_padding: float
    max_paste_elements: int
    paste_regions: Optional[bool]

    OWNER: ClassVar[str] = 'EmbedMaskMaskHead'

    @classmethod
    def from_cfg(cls, test_cfg=None,
                 owner: Optional[str] = None) -> 'MaskInferenceSettings':
        """Resolves and validates a ``test_cfg`` (None: all defaults).

        Raises:
            ValueError: a key neither head knows, ``mask_thr`` outside
                (0, 1) or an unknown ``mask_resample``.
        """
        owner = owner or cls.OWNER
        cfg = _check_keys(test_cfg, owner)
        values = {k: cfg.get(k, default)
                  for k, default in MASK_DEFAULTS.items()}
        thr = values['mask_thr']
        if not 0 < thr < 1:
            raise ValueError(f'{owner}: test_cfg.mask_thr must be in (0, 1), '
                             f'got {thr!r}')
        check_choice(owner, 'test_cfg.mask_resample',
                     values['mask_resample'], MASK_RESAMPLES)
        return cls(**values)


def _plain(value):
    """A config value as plain dicts/lists, to compare snapshots."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in dict.items(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class HeadSettings:
    """A head's ``settings``: ``settings_cls`` resolved from the head's
    ``test_cfg`` (owner: the head's class name), kept until ``test_cfg`` is
    reassigned or edited in place, then resolved again.

    Example:
        >>> class EmbedMaskMaskHead(...):
        ...     settings = HeadSettings(MaskInferenceSettings)
    """

    def __init__(self, settings_cls) -> None:
        self.settings_cls = settings_cls
        self.slot = '_settings'

    def __set_name__(self, owner, name: str) -> None:
        self.slot = f'_{name}_resolved'

    def __get__(self, head, owner=None):
        if head is None:
            return self
        cfg = head.test_cfg
        snapshot = _plain(cfg)
        cached = head.__dict__.get(self.slot)
        if cached is None or cached[0] != snapshot:
            cached = (snapshot, self.settings_cls.from_cfg(
                cfg, type(head).__name__))
            head.__dict__[self.slot] = cached
        return cached[1]

    def __set__(self, head, value) -> None:
        raise AttributeError('settings are resolved from test_cfg: set '
                             'test_cfg (or one of its keys) instead')

