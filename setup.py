from setuptools import find_packages, setup

setup(
    name="mirrorgan_tf",
    version="0.1.0",
    description="MirrorGAN (text-to-image generation by redescription) in TensorFlow / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["mirrorgan_tf", "mirrorgan_tf.*", "pipelines", "pipelines.*"]),
    install_requires=[
        "tensorflow~=2.21.0",
        # Wheels must match TensorFlow's minor version.
        "tensorflow-text~=2.21.0",
        "keras>=3.10,<4",
        "keras-tuner>=1.4.7,<2",
        "numpy>=1.26,<3",
        "pillow>=10",
        "pyyaml>=6",
        # Structured configs over our dataclasses; 2.4 is the first to type-check Literal fields.
        "omegaconf>=2.4,<3",
        # TF 2.21 no longer installs TensorBoard, which tf.summary writers need.
        "tensorboard~=2.21.0",
        "tensorflow-serving-api~=2.21.0",
        "grpcio>=1.60",
        # evaluate --metrics diversity: Naeem et al.'s own precision/recall/density/coverage code;
        # 0.2 (2020, the latest) is the version tested with its compute_prdc(real_features,
        # fake_features, nearest_k). It brings scikit-learn and scipy along.
        "prdc>=0.2",
        # python -m mirrorgan_tf.tune's default tuner (Bayesian optimisation in Keras Tuner) needs
        # these; listed here, not in an extra, so every entry point runs after `pip install -e .`.
        "scipy>=1.11",
        "scikit-learn>=1.3",
    ],
    extras_require={
        # selenium drives Debian's headless chromium + chromium-driver in the page tests.
        # pytest-xdist runs the suite on two processes (pytest.ini); filelock lets its workers
        # share the session fixtures (prepared data, the smoke run) instead of each building them.
        "test": ["pytest>=8", "pytest-xdist>=3.6", "filelock>=3.10", "selenium>=4.11,<5"],
        # A Linux machine with NVIDIA GPUs: TensorFlow's own CUDA and cuDNN wheels, at our
        # TensorFlow version (plain `tensorflow` has no CUDA libraries and trains on the CPU).
        "gpu": ["tensorflow[and-cuda]~=2.21.0"],
        # python -m mirrorgan_tf.demo: the page's Blocks, launch() and css= as Gradio 6 has them.
        "demo": ["gradio>=6.0,<7"],
        # Kept so that older commands still install: scipy and scikit-learn are now required.
        "tuner": [],
        # Only to import PyTorch .pth weights (torchvision backbones, the released MirrorGAN /
        # AttnGAN files); never needed to train, evaluate or serve. 2.4 reads the legacy 0.3/0.4
        # files with weights_only=True; tested with 2.13 (CPU build). The cap keeps pip on the
        # tested line: on PyPI, 2.14's Linux wheels are CUDA builds pulling in GBs of CUDA libraries.
        "torch": ["torch>=2.4,<2.14"],
    },
)
