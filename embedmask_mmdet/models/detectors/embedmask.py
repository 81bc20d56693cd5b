from mmdet.models.detectors.single_stage_instance_seg import \
    SingleStageInstanceSegmentor
from mmdet.registry import MODELS


@MODELS.register_module()
class EmbedMask(SingleStageInstanceSegmentor):
    """EmbedMask (Ying et al., arXiv 1912.01954): an FCOS detector whose
    detections carry an embedding and a margin, with masks made of the pixels
    whose embeddings lie within the margin.

    ``bbox_head`` is an :class:`EmbedMaskBboxHead`, ``mask_head`` an
    :class:`EmbedMaskMaskHead`; training, inference and the data flow between
    the heads are those of :class:`SingleStageInstanceSegmentor`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        box_dim = getattr(self.bbox_head, 'embed_dim', None)
        mask_dim = getattr(self.mask_head, 'embed_dim', None)
        if box_dim is not None and mask_dim is not None and box_dim != mask_dim:
            raise ValueError(
                f'EmbedMask: bbox_head.embed_dim ({box_dim}) and '
                f'mask_head.embed_dim ({mask_dim}) must be equal')
