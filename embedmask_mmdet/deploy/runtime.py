"""Run an exported EmbedMask (.onnx) with ONNX Runtime or OpenVINO and get
mmdet ``DetDataSample``s, the same fields as ``DetInferencer``'s
(``pred_instances``: ``bboxes``, ``scores``, ``labels``, ``masks``).

Preprocessing is the config's own test pipeline and data preprocessor (the
config travels inside the .onnx); the graph runs one image at a time. A
graph with the compact mask outputs (the default export) gets its masks
from the mask head's own ``predict_by_feat`` (built from the config, no
weights: the masks' closed form needs none), so each mask is evaluated only
where it can be foreground, at the original image size, exactly as
PyTorch places it; a dense graph's N x H x W probabilities go through the
NumPy step (:mod:`.postprocess`).
"""
import logging
import os
import os.path as osp
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmcv.transforms import Compose
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.structures import InstanceData

from ..models.utils.inference_settings import MaskInferenceSettings
from ..utils.image_io import UnreadableImage, read_image
from .export import META_CLASSES, META_CONFIG
from .graph import MASK_CONTRACTS
from .postprocess import postprocess

BACKENDS = ('onnxruntime', 'openvino')
PRECISIONS = ('fp32', 'bf16')
ImageInput = Union[str, np.ndarray]


def read_metadata(model_file: str) -> dict:
    """The .onnx's ``metadata_props`` (weights are not loaded)."""
    import onnx
    proto = onnx.load(model_file, load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


# oneDNN ISA caps below AVX512_CORE: OpenVINO's bundled oneDNN honours
# ONEDNN_MAX_CPU_ISA but its capability report does not, and under these it
# has no bf16 kernels (compiling with the bf16 hint fails: "Convolution node
# ... is not initialized"); under AVX512_CORE it emulates bf16
NO_BF16_ISAS = ('SSE41', 'AVX', 'AVX2', 'AVX2_VNNI', 'AVX2_VNNI_2')


def openvino_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here: it reports BF16
    and ``ONEDNN_MAX_CPU_ISA`` does not cap oneDNN below AVX512_CORE."""
    if os.environ.get('ONEDNN_MAX_CPU_ISA', '').upper() in NO_BF16_ISAS:
        return False
    import openvino as ov
    caps = ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')
    return 'BF16' in caps


class _OnnxRuntimeSession:

    def __init__(self, model_file: str, precision: str,
                 num_threads: Optional[int], providers=None) -> None:
        import onnxruntime as ort
        if precision != 'fp32':
            raise ValueError(
                "precision='bf16': ONNX Runtime's CPU provider runs the graph "
                "in float32; use backend='openvino' for bf16")
        options = ort.SessionOptions()
        # no arena: its blocks would stay held through the mask step, the
        # peak of a large image (PyTorch's allocator returns them)
        options.enable_cpu_mem_arena = False
        # workers that block at once: PyTorch's mask step follows the graph
        # on the same cores, and spinning workers slowed it (4000x3000,
        # 74 dets, 2 cores: 265 -> 230 ms)
        options.add_session_config_entry('session.intra_op.allow_spinning',
                                         '0')
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        self.session = ort.InferenceSession(
            model_file, options,
            providers=providers or ['CPUExecutionProvider'])
        self.input_shape = self.session.get_inputs()[0].shape
        # a design whose graph never reads img_shape has no such input
        self.feeds_img_shape = 'img_shape' in {
            i.name for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def metadata(self) -> dict:
        """The model's ``metadata_props``."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, feed: Dict[str, np.ndarray]):
        return self.session.run(self.output_names, feed)


class _OpenVINOSession:

    def __init__(self, model_file: str, precision: str,
                 num_threads: Optional[int], device: str = 'CPU') -> None:
        import openvino as ov
        if precision == 'bf16' and not openvino_has_bf16():
            isa = os.environ.get('ONEDNN_MAX_CPU_ISA')
            raise ValueError(
                "precision='bf16': OpenVINO cannot run bf16 on this CPU "
                + (f'(ONEDNN_MAX_CPU_ISA={isa} caps oneDNN below '
                   'AVX512_CORE; unset it)' if isa and isa.upper() in
                   NO_BF16_ISAS else '(it reports no BF16 capability)')
                + '; use fp32')
        core = ov.Core()
        # explicit: OpenVINO picks bf16 by itself on CPUs that have it
        config = {'INFERENCE_PRECISION_HINT': 'f32' if precision == 'fp32'
                  else 'bf16', 'PERFORMANCE_HINT': 'LATENCY'}
        if num_threads:
            config['INFERENCE_NUM_THREADS'] = int(num_threads)
        model = core.read_model(model_file)
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        shape = model.input('image').get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else '?'
                            for d in shape]
        self.feeds_img_shape = 'img_shape' in {
            name for port in model.inputs for name in port.get_names()}
        self.output_names = [port.get_any_name() for port in model.outputs]

    def __call__(self, feed: Dict[str, np.ndarray]):
        # no copies of the outputs: the caller reads them before the next
        # inference
        res = self.request.infer(feed, share_inputs=True, share_outputs=True)
        return [res[self.compiled.output(name)] for name in self.output_names]


class EmbedMaskONNXModel:
    """An exported EmbedMask graph run by ONNX Runtime or OpenVINO.

    Args:
        model_file (str): The .onnx written by ``export_onnx``.
        backend (str): 'onnxruntime' or 'openvino'.
        config (str | Config, optional): The model's config; None: the one
            stored in the .onnx at export.
        precision (str): 'fp32', or 'bf16' (OpenVINO on a CPU with bf16
            units).
        num_threads (int, optional): Inference threads; None: the
            backend's default (all cores).
        providers (list, optional): ONNX Runtime execution providers, e.g.
            ``['CUDAExecutionProvider', 'CPUExecutionProvider']`` with
            onnxruntime-gpu; None: the CPU provider.

    Call it on an image path, an (H, W, 3) BGR uint8 array, or a list of
    them; it returns one ``DetDataSample`` per readable input. An
    unreadable file is skipped with a warning naming it; ``self.skipped``
    lists them (path, reason) after each call, and the call ends with a
    log line counting processed and skipped inputs.
    """

    def __init__(self, model_file: str, backend: str = 'onnxruntime',
                 config=None, precision: str = 'fp32',
                 num_threads: Optional[int] = None,
                 providers: Optional[list] = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f'backend={backend!r}: use one of {BACKENDS}')
        if precision not in PRECISIONS:
            raise ValueError(f'precision={precision!r}: use one of '
                             f'{PRECISIONS}')
        if not osp.isfile(model_file):
            raise FileNotFoundError(
                f'{model_file}: no such file; export one with '
                'tools/deployment/export_onnx.py')
        register_all_modules()
        self.session = _OnnxRuntimeSession(
            model_file, precision, num_threads, providers) \
            if backend == 'onnxruntime' else _OpenVINOSession(
                model_file, precision, num_threads)
        # ONNX Runtime has read the metadata: no second parse of the file
        # (onnx.load holds the whole proto, weights included)
        meta = self.session.metadata() if backend == 'onnxruntime' else \
            read_metadata(model_file)
        if config is None:
            if META_CONFIG not in meta:
                raise ValueError(
                    f'{model_file} carries no EmbedMask config (it was not '
                    'written by export_onnx); pass config=')
            config = Config.fromstring(meta[META_CONFIG], '.py')
        elif not isinstance(config, Config):
            config = Config.fromfile(config)
        self.cfg = config
        self.backend = backend
        self.precision = precision
        classes = meta.get(META_CLASSES)
        self.dataset_meta = dict(classes=tuple(classes.split('\n'))) \
            if classes else dict(config.get('metainfo', {}))
        self.mask_contract = _mask_contract(self.session.output_names,
                                            model_file)
        # the compact contract's masks: the mask head's own predict code
        self.mask_head = _mask_head(config) \
            if self.mask_contract == 'compact' else None
        # the dense contract's NumPy step: the same settings, resolved from
        # the config's test_cfg as the mask head resolves them
        settings = self.mask_head.settings if self.mask_head is not None \
            else MaskInferenceSettings.from_cfg(config.model.get('test_cfg'))
        self.mask_cfg = dict(
            mask_thr=settings.mask_thr,
            crop_to_box=settings.crop_to_box,
            crop_padding=settings.crop_padding,
            mask_out_stride=config.model.mask_head.get('mask_out_stride', 4))
        self.data_preprocessor = MODELS.build(config.model.data_preprocessor)
        self.pipeline = self._inference_pipeline(config)
        shape = self.session.input_shape[2:]
        self.fixed_shape = tuple(shape) if all(
            isinstance(s, int) for s in shape) else None
        self.skipped: List[tuple] = []
        _release_freed_memory()

    @staticmethod
    def _inference_pipeline(cfg: Config) -> Compose:
        steps = []
        for step in cfg.test_dataloader.dataset.pipeline:
            step = dict(step)
            if step['type'] in ('LoadAnnotations', 'mmdet.LoadAnnotations'):
                continue  # no ground truth at inference
            if 'LoadImageFrom' in step['type']:
                step = dict(type='mmdet.LoadImageFromNDArray')
            if step['type'] in ('PackDetInputs', 'mmdet.PackDetInputs'):
                step['meta_keys'] = tuple(k for k in step.get('meta_keys', (
                    'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
                    if k != 'img_id')
            steps.append(step)
        return Compose(steps)

    # ------------------------------------------------------------- inference
    def prepare(self, item: ImageInput) -> dict:
        """One image (a path, or an (H, W, 3) BGR uint8 array) through the
        config's test pipeline: a batch of one as the test dataloader gives
        it (``inputs``, ``data_samples``), what :meth:`predict_batch` takes.
        Raises ``UnreadableImage`` (a ``ValueError``) naming a file that
        cannot be read."""
        path = item if isinstance(item, str) else None
        img = read_image(item) if path is not None else item
        data = self.pipeline(dict(img=img, img_path=path))
        return dict(inputs=[data['inputs']],
                    data_samples=[data['data_samples']])

    def graph_inputs(self, image: np.ndarray,
                     img_shape) -> Dict[str, np.ndarray]:
        """The graph's feeds for one preprocessed (1, 3, H, W) image whose
        un-padded size is ``img_shape``: ``image`` as contiguous float32,
        zero-padded to a fixed-shape graph's size, and ``img_shape`` where
        the graph reads it. ValueError for an image larger than a fixed
        shape."""
        image = np.ascontiguousarray(image, dtype=np.float32)
        if self.fixed_shape is not None:
            height, width = self.fixed_shape
            if image.shape[2] > height or image.shape[3] > width:
                raise ValueError(
                    f'input {image.shape[2]}x{image.shape[3]} exceeds the '
                    f'graph\'s fixed {height}x{width}; export with a larger '
                    '--shape, or without --shape (any size)')
            image = np.pad(image, ((0, 0), (0, 0), (0, height - image.shape[2]),
                                   (0, width - image.shape[3])))
        feed = dict(image=image)
        if self.session.feeds_img_shape:
            feed['img_shape'] = np.asarray(img_shape[:2], np.int64)
        return feed

    def run_graph(self, image: np.ndarray, img_shape) -> list:
        """Raw graph outputs (``MASK_CONTRACTS[self.mask_contract]``) for
        one preprocessed (1, 3, H, W) float32 image whose un-padded size is
        ``img_shape`` (fed by :meth:`graph_inputs`)."""
        outputs = self.session(self.graph_inputs(image, img_shape))
        _release_freed_memory()
        return outputs

    def predict_batch(self, data: dict) -> List[DetDataSample]:
        """A batch as the test dataloader gives it -> its data samples with
        ``pred_instances`` at the original image size."""
        with torch.no_grad():
            data = self.data_preprocessor(data, False)
        inputs, samples = data['inputs'], data['data_samples']
        for i, sample in enumerate(samples):
            outputs = self.run_graph(inputs[i:i + 1].numpy(),
                                     sample.img_shape)
            if self.mask_contract == 'compact':
                sample.pred_instances = self.compact_masks(outputs, sample)
            else:
                result = postprocess(*outputs, sample.img_shape,
                                     sample.ori_shape, **self.mask_cfg)
                sample.pred_instances = InstanceData(
                    **{k: torch.from_numpy(v) for k, v in result.items()})
        return samples

    def compact_masks(self, outputs: list, sample: DetDataSample
                      ) -> InstanceData:
        """The compact outputs of one image -> ``bboxes``, ``scores``,
        ``labels`` and boolean ``masks`` at ``ori_shape``, by
        ``EmbedMaskMaskHead.predict_by_feat`` (rescale=True), the code
        ``EmbedMask.predict`` runs."""
        # copies (small: no N x H x W map): OpenVINO's outputs are views of
        # buffers its next inference overwrites, and the results outlive it
        dets, labels, embeddings, margins, points, pixel_embeds = (
            torch.from_numpy(np.array(o)) for o in outputs)
        results = InstanceData(
            bboxes=dets[:, :4].float(), scores=dets[:, 4].float(),
            labels=labels.long(), embeddings=embeddings.float(),
            margins=margins.float(), points=points.float())
        img_meta = dict(img_shape=sample.img_shape,
                        ori_shape=sample.ori_shape)
        with torch.no_grad():
            out = self.mask_head.predict_by_feat(
                pixel_embeds.float(), None, [results], [img_meta],
                rescale=True)[0]
        return InstanceData(bboxes=out.bboxes, scores=out.scores,
                            labels=out.labels, masks=out.masks)

    def __call__(self, inputs: Union[ImageInput, Sequence[ImageInput]]
                 ) -> List[DetDataSample]:
        if isinstance(inputs, (str, np.ndarray)):
            inputs = [inputs]
        self.skipped = []
        results = []
        for item in inputs:
            path = item if isinstance(item, str) else None
            try:
                data = self.prepare(item)
            except UnreadableImage as e:
                warnings.warn(f'skipped {e}')
                self.skipped.append((path, str(e)))
                continue
            sample = self.predict_batch(data)[0]
            sample.set_metainfo(dict(img_path=path))
            results.append(sample)
        print_log(f'{len(results)} images processed, {len(self.skipped)} '
                  'skipped' + (': ' + ', '.join(p for p, _ in self.skipped)
                               if self.skipped else ''), logger='current',
                  level=logging.WARNING if self.skipped else logging.INFO)
        return results


def _release_freed_memory() -> None:
    """Returns the C heap's free pages to the OS (glibc ``malloc_trim``; a
    no-op elsewhere). Called after loading and after each graph run: the
    pages the backend freed would otherwise stay resident under the masks
    allocated next, and a large image's peak would be both."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes
            _MALLOC_TRIM = ctypes.CDLL('libc.so.6').malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


def _mask_contract(output_names: Sequence[str], model_file: str) -> str:
    """Which ``MASK_CONTRACTS`` entry a graph's outputs are."""
    for name, outputs in MASK_CONTRACTS.items():
        if list(outputs) == list(output_names):
            return name
    raise ValueError(
        f'{model_file}: outputs {list(output_names)} are none of the EmbedMask '
        f'export contracts {dict(MASK_CONTRACTS)}; re-export it with '
        'tools/deployment/export_onnx.py')


def _mask_head(cfg: Config):
    """The config's mask head with the model's ``test_cfg`` (as the
    detector builds it), in eval mode; its weights are never used."""
    head_cfg = cfg.model.mask_head.copy()
    head_cfg.update(test_cfg=cfg.model.get('test_cfg'))
    return MODELS.build(head_cfg).eval()


def evaluate(cfg: Config, predict_batch: Callable[[dict], list]) -> dict:
    """The config's test dataloader and evaluator (CocoMetric) over
    ``predict_batch`` (``EmbedMaskONNXModel.predict_batch``, or a PyTorch
    model's ``test_step``): the metrics dict."""
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner
    dataloader = Runner.build_dataloader(cfg.test_dataloader)
    evaluator = Evaluator(cfg.test_evaluator)
    evaluator.dataset_meta = dataloader.dataset.metainfo
    for data in dataloader:
        evaluator.process(data_samples=predict_batch(data), data_batch=data)
    return evaluator.evaluate(len(dataloader.dataset))
