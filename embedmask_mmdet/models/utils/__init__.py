from .embedding import (location_map, mask_log_probability, mask_logit,
                        mask_probability, prior_margin_bias, proposal_margin,
                        spatial_embedding)

__all__ = [
    'location_map', 'mask_log_probability', 'mask_logit', 'mask_probability',
    'prior_margin_bias', 'proposal_margin', 'spatial_embedding'
]
from .checks import check_choice, check_embed_dim  # noqa: E402

__all__ += ['check_choice', 'check_embed_dim']
from .precision import Float32Conv2d, autocast_off  # noqa: E402

__all__ += ['Float32Conv2d', 'autocast_off']
from .mask_targets import gt_mask_tensor  # noqa: E402

__all__ += ['gt_mask_tensor']
