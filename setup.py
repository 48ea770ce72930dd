"""muse_jax: Muse (Chang et al. 2023) in JAX/Flax at TPU-pod scale.

Versions are pinned to a set that installs and works together on Python 3.11 (CPU, TPU via the
`tpu` extra). The `parity` extra installs torch first in README's order so pip takes the local CPU
build instead of pulling CUDA wheels. lpips==0.1.4 (the LPIPS parity test's reference) is not an
extra: README installs it with --no-deps, as its torchvision requirement resolves to PyPI's
torchvision 0.28.0 (the one for torch 2.13.0), a CUDA build whose ops do not load next to the CPU
torch, so `import torchvision` fails and transformers' model imports fail with it.
"""
from setuptools import find_packages, setup

CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "chex==0.1.92",
    "absl-py==2.5.1",
    "grain==0.2.18",
    "array-record==0.8.6",
    "tensorflow-datasets==4.9.10",
    "numpy>=2.0,<2.5",
    "pillow==13.0.0",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "sentencepiece==0.2.3",
    "tqdm==4.70.1",
    "tensorboardx==2.6.5",
]

setup(
    name="muse_jax",
    version="0.1.0",
    description="Muse text-to-image masked generative transformers in JAX/Flax for TPU pods",
    packages=find_packages(include=["muse_jax", "muse_jax.*", "configs"]),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={
        "test": ["pytest==9.0.3", "pytest-xdist==3.8.0", "scipy==1.17.1", "nbformat==5.11.1",
                 "nbclient==0.11.0", "ipykernel==7.4.0"],
        "parity": ["torch==2.13.0", "transformers==5.23.0", "diffusers==0.42.1"],
        "tpu": ["libtpu==0.0.42"],
    },
    entry_points={
        "console_scripts": [
            "muse-train=muse_jax.main:run_main",
            "muse-fit=muse_jax.cli.fit:run_main",
            "muse-convert=muse_jax.convert.vq:run_main",
            "muse-encode=muse_jax.cli.encode:run_main",
            "muse-sample=muse_jax.cli.sample:run_main",
            "muse-edit=muse_jax.cli.edit:run_main",
            "muse-eval=muse_jax.cli.evaluate:run_main",
            "muse-ema=muse_jax.cli.ema:run_main",
            "muse-demo=muse_jax.cli.demo:run_main",
        ],
    },
)
