"""Entry points of registered ids whose environment has not been built yet.

They fail loudly instead of pretending to work; each is replaced by the real env when its
issue lands.
"""

from __future__ import annotations

from typing import NoReturn


class EnvNotBuiltError(NotImplementedError):
    """Raised by ``gym.make`` for an id that is registered but not implemented yet."""


def _not_built(env_id: str, what: str) -> NoReturn:
    from plasticity_gym.registration import BUILT_ENV_IDS

    raise EnvNotBuiltError(
        f"{env_id} is registered but not built yet in this version of plasticity-gym "
        f"({what}). Available now: {', '.join(BUILT_ENV_IDS)}."
    )


def make_continual_imagenet(**_kwargs) -> NoReturn:
    _not_built("ContinualImageNet-v0", "the Continual ImageNet binary-task stream")


def make_class_inc_cifar100(**_kwargs) -> NoReturn:
    _not_built("ClassIncCIFAR100-v0", "the class-incremental CIFAR-100 stream")
