"""Entry points of registered ids whose environment has not been built yet.

They fail loudly instead of pretending to work; each is replaced by the real env when its
issue lands. Every id of this version is built; the mechanism stays for ids to come.
"""

from __future__ import annotations

from typing import NoReturn


class EnvNotBuiltError(NotImplementedError):
    """Raised by ``gym.make`` for an id that is registered but not implemented yet."""


def not_built(env_id: str, what: str) -> NoReturn:
    """Raise :class:`EnvNotBuiltError` for ``env_id`` (an entry point calls this)."""
    from plasticity_gym.registration import BUILT_ENV_IDS

    raise EnvNotBuiltError(
        f"{env_id} is registered but not built yet in this version of plasticity-gym "
        f"({what}). Available now: {', '.join(BUILT_ENV_IDS)}."
    )
