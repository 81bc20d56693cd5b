"""Timing and memory measurements: interleaved latency, training steps,
EmbedMask's mask post-processing vs the number of detections."""
import math
import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmengine.structures import InstanceData

from .models import (calibrate_solov2, hold_detections, model_cfg,
                     with_mmdet_focal)


def register() -> None:
    """Registers mmdet + EmbedMask modules, quietens mmengine's init logs."""
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger
    import embedmask_mmdet  # noqa: F401
    register_all_modules(init_default_scope=True)
    MMLogger.get_current_instance().setLevel('WARNING')


def sync(device: str) -> None:
    if str(device).startswith('cuda'):
        torch.cuda.synchronize()


def current_rss_mb() -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.
    return float('nan')


# ---------------------------------------------------------------------- inputs
def make_batch(size: Tuple[int, int], batch: int = 1, with_gt: bool = False,
               num_classes: int = 80, num_gt: int = 4, seed: int = 0) -> dict:
    """Random uint8 images (as after the test pipeline: ``ori_shape`` =
    ``img_shape`` = ``size``) and, with ``with_gt``, ``num_gt`` boxes per
    image whose masks are the inscribed ellipses."""
    h, w = size
    rng = np.random.default_rng(seed)
    inputs, samples = [], []
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(batch):
        inputs.append(torch.from_numpy(
            rng.integers(0, 256, (3, h, w), dtype=np.uint8)))
        sample = DetDataSample(metainfo=dict(
            img_shape=(h, w), ori_shape=(h, w), scale_factor=(1., 1.)))
        if with_gt:
            wh = rng.uniform(0.15, 0.45, (num_gt, 2)) * (w, h)
            xy = rng.uniform(0, 1, (num_gt, 2)) * ((w, h) - wh)
            boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
            masks = np.zeros((num_gt, h, w), dtype=np.uint8)
            for k, (x1, y1, x2, y2) in enumerate(boxes):
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                rx, ry = max((x2 - x1) / 2, 1), max((y2 - y1) / 2, 1)
                masks[k] = ((xx + 0.5 - cx) / rx)**2 + \
                    ((yy + 0.5 - cy) / ry)**2 <= 1
            gt = InstanceData()
            gt.bboxes = torch.from_numpy(boxes)
            gt.labels = torch.from_numpy(
                rng.integers(0, num_classes, num_gt)).long()
            gt.masks = BitmapMasks(masks, h, w)
            sample.gt_instances = gt
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


# --------------------------------------------------------------------- timing
def interleave(fns: Dict[str, Callable], warmup: int, reps: int,
               device: str = 'cpu') -> Dict[str, List[float]]:
    """Seconds per call of every function, round-robin: each repetition
    calls every function once (starting one later each time), so that
    machine noise hits all of them alike."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    times = {name: [] for name in names}
    for rep in range(reps):
        for i in range(len(names)):
            name = names[(rep + i) % len(names)]
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def summarize(seconds: Sequence[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return dict(median_ms=float(np.median(ms)),
                p90_ms=float(np.percentile(ms, 90)), mean_ms=float(ms.mean()),
                min_ms=float(ms.min()), n=int(len(ms)))


# ----------------------------------------------------------------- the models
def build(name: str, arch: str, device: str, num_dets: int = 100,
          train: bool = False, mmdet_focal: bool = False):
    """``mmdet_focal``: mmdet's FocalLoss in place of FusedFocalLoss."""
    from mmdet.registry import MODELS
    cfg = model_cfg(name, arch)
    if mmdet_focal:
        cfg = with_mmdet_focal(cfg)
    if not train:
        cfg = hold_detections(name, cfg, num_dets)
    model = MODELS.build(cfg)
    model.init_weights()
    model.to(device)
    model.train(train)
    return model


def predictor(name: str, model, size: Tuple[int, int], device: str,
              batch: int = 1) -> Tuple[Callable, int]:
    """A function running ``batch`` images end-to-end (preprocessing,
    network, post-processing, masks at the original size) and the detection
    count of the first."""
    data = make_batch(size, batch=batch)
    if name == 'solov2':
        with torch.no_grad():
            calibrate_solov2(
                model, model.data_preprocessor(data, False)['inputs'])

    def run():
        with torch.no_grad():
            batch = model.data_preprocessor(data, False)
            return model(**batch, mode='predict')

    results = run()
    sync(device)
    return run, len(results[0].pred_instances)


def batch_latency(models: Dict[str, object], size: Tuple[int, int],
                  batches: Sequence[int], warmup: int, reps: int,
                  device: str) -> Dict[str, dict]:
    """Per-image latency of every model at each batch size (a call on
    ``b`` images timed and divided by ``b``), all (model, batch) pairs
    interleaved. {model: {batch: summary of per-image seconds, + dets}}."""
    fns, dets = {}, {}
    for name, model in models.items():
        for b in batches:
            fns[(name, b)], dets[(name, b)] = predictor(name, model, size,
                                                        device, batch=b)
    times = interleave(fns, warmup, reps, device)
    out = {name: {} for name in models}
    for (name, b), secs in times.items():
        out[name][b] = dict(summarize([t / b for t in secs]),
                            dets=dets[(name, b)])
    return out


def train_stepper(model, size: Tuple[int, int], device: str, batch: int = 2,
                  num_classes: int = 80) -> Callable:
    """One SGD step (loss, backward, update) on a random batch with gt."""
    data = make_batch(size, batch=batch, with_gt=True, num_classes=num_classes,
                      seed=1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9,
                                weight_decay=1e-4)

    def step():
        batch_data = model.data_preprocessor(data, True)
        losses = model(**batch_data, mode='loss')
        loss, _ = model.parse_losses(losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss)

    return step


def saved_for_backward_mb(model, size: Tuple[int, int], batch: int = 2,
                          num_classes: int = 80) -> float:
    """MiB of the tensors autograd keeps for the backward of one training
    forward (each storage counted once): the activation memory of a step,
    free of the allocator's noise that peak RSS carries."""
    data = make_batch(size, batch=batch, with_gt=True, num_classes=num_classes,
                      seed=1)
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    batch_data = model.data_preprocessor(data, True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        losses = model(**batch_data, mode='loss')
    del losses
    return sum(storages.values()) / 2**20


# -------------------------------------------------- EmbedMask post-processing
def fake_detections(num: int, img_shape: Tuple[int, int], embed_dim: int,
                    log_margin: float, device: str, seed: int = 0
                    ) -> InstanceData:
    """``num`` detections as the box head hands them to the mask head:
    boxes, scores, labels, FCOS points, raw embeddings and margins."""
    g = torch.Generator().manual_seed(seed)
    h, w = img_shape
    centre = torch.rand(num, 2, generator=g) * torch.tensor([w, h])
    half = (torch.rand(num, 2, generator=g) * 0.2 + 0.02) * torch.tensor([w, h])
    res = InstanceData()
    res.bboxes = torch.cat([centre - half, centre + half], 1)
    res.scores = torch.rand(num, generator=g)
    res.labels = torch.randint(0, 80, (num, ), generator=g)
    res.points = centre
    res.embeddings = torch.randn(num, embed_dim, generator=g) * 0.5
    res.margins = torch.full((num, embed_dim), math.exp(log_margin)) * \
        torch.exp(torch.randn(num, embed_dim, generator=g) * 0.3)
    return res.to(device)


def postproc_sweep(model, size: Tuple[int, int], dets: Sequence[int],
                   warmup: int, reps: int, device: str) -> dict:
    """Times EmbedMask's mask head predict path for one image (mask
    probability from the pixel embeddings, resampling to the original size,
    threshold) for each number of detections, and its two parts."""
    from embedmask_mmdet.models.utils import (mask_probability,
                                              prior_margin_bias)
    from embedmask_mmdet.models.utils.mask_paste import paste_masks
    head = model.mask_head
    settings = head.settings
    with torch.no_grad():
        batch = model.data_preprocessor(make_batch(size), False)
        pixel_embeds = head(model.extract_feat(batch['inputs']))[0]
    pixel_embed = pixel_embeds[0]
    meta = batch['data_samples'][0].metainfo
    # margins around the head's prior (p = 0.5 at distance prior_margin)
    log_margin = prior_margin_bias(model.bbox_head.prior_margin)
    fns, probs = {}, {}
    for n in dets:
        res = fake_detections(n, size, head.embed_dim, log_margin, device)

        def total(res=res):
            with torch.no_grad():
                return head.predict_by_feat(pixel_embeds, None, [res],
                                            [meta], rescale=True)

        def prob(res=res):
            with torch.no_grad():
                return mask_probability(pixel_embed,
                                        head.proposal_embedding(res),
                                        res.margins)

        probs[n] = prob()

        def paste(n=n):
            with torch.no_grad():
                return paste_masks(
                    probs[n], head.prob_stride, size, size,
                    threshold=settings.mask_thr,
                    max_elements=settings.max_paste_elements)

        fns[('total', n)] = total
        fns[('mask_probability', n)] = prob
        fns[('paste_masks', n)] = paste
    times = interleave(fns, warmup, reps, device)
    out = {part: {} for part in ('total', 'mask_probability', 'paste_masks')}
    for (part, n), secs in times.items():
        out[part][n] = summarize(secs)
    x = np.asarray(list(dets), dtype=float)
    y = np.asarray([out['total'][n]['median_ms'] for n in dets])
    out['fit'] = linear_fit(x, y)
    out['pixel_embed_shape'] = list(pixel_embed.shape)
    return out


def linear_fit(x: np.ndarray, y: np.ndarray) -> dict:
    """Least-squares y = intercept + slope * x and its R^2."""
    if len(x) < 2 or np.ptp(x) == 0:
        return dict(slope=float('nan'), intercept=float('nan'),
                    r2=float('nan'))
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    ss_tot = float(((y - y.mean())**2).sum())
    r2 = 1. - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.
    return dict(slope=float(slope), intercept=float(intercept), r2=r2)


# ------------------------------------------------ where EmbedMask's time goes
BREAKDOWN_PARTS = ('preprocess + backbone + neck', 'box head convs',
                   'box decoding + NMS', 'pixel branch',
                   'masks (p, resample, threshold)')


def breakdown(models: Dict[str, object], size: Tuple[int, int], warmup: int,
              reps: int, device: str) -> dict:
    """Median ms of each stage of the predict path of ``models`` (name ->
    built FCOS-family model; EmbedMask's mask stages when it has a mask
    head), every stage of every model interleaved in one loop, plus each
    model's end-to-end time in the same loop so the parts can be checked
    against the whole."""
    data = make_batch(size)
    fns = {}
    for name, model in models.items():
        with torch.no_grad():
            batch = model.data_preprocessor(data, False)
            feats = model.extract_feat(batch['inputs'])
            head_out = model.bbox_head(feats)
            metas = [s.metainfo for s in batch['data_samples']]
            dets = model.bbox_head.predict_by_feat(
                *head_out, batch_img_metas=metas, rescale=True)
            mask_head = getattr(model, 'mask_head', None)
            mask_out = mask_head(feats) if mask_head is not None else None

        def no_grad(fn):
            def run():
                with torch.no_grad():
                    return fn()
            return run

        parts = {
            'preprocess + backbone + neck': lambda m=model: m.extract_feat(
                m.data_preprocessor(data, False)['inputs']),
            'box head convs': lambda m=model, f=feats: m.bbox_head(f),
            'box decoding + NMS': lambda m=model, o=head_out, md=metas:
            m.bbox_head.predict_by_feat(*o, batch_img_metas=md,
                                        rescale=True),
        }
        if mask_out is not None:
            parts['pixel branch'] = lambda h=mask_head, f=feats: h(f)
            parts['masks (p, resample, threshold)'] = \
                lambda h=mask_head, o=mask_out, d=dets, md=metas: \
                h.predict_by_feat(*o, results_list=[r.clone() for r in d],
                                  batch_img_metas=md, rescale=True)

        def total(m=model):
            return m(**m.data_preprocessor(data, False), mode='predict')

        parts['end to end'] = total
        for part, fn in parts.items():
            fns[(name, part)] = no_grad(fn)
    times = interleave(fns, warmup, reps, device)
    out = {name: {} for name in models}
    for (name, part), secs in times.items():
        out[name][part] = summarize(secs)
    return out
