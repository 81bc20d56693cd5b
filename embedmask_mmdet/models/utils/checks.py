"""Build-time checks of user-settable values, with messages naming the key."""
from typing import Sequence


def check_choice(owner: str, name: str, value, choices: Sequence) -> None:
    """Raises ValueError unless ``value`` is one of ``choices``.

    Args:
        owner (str): Name of the class checking, for the message.
        name (str): Name of the setting (config key), for the message.
        value: The value set.
        choices (Sequence): The supported values.

    Raises:
        ValueError: ``value`` is not in ``choices``.
    """
    if value not in choices:
        raise ValueError(f'{owner}: {name}={value!r} is not supported; '
                         f'use one of {tuple(choices)}')


def check_embed_dim(owner: str, embed_dim) -> None:
    """D must hold the 2 spatial channels and at least one free channel.

    Args:
        owner (str): Name of the class checking, for the message.
        embed_dim: D, the embedding size set.

    Raises:
        ValueError: ``embed_dim`` is not an int >= 3.
    """
    if not isinstance(embed_dim, int) or embed_dim < 3:
        raise ValueError(f'{owner}: embed_dim must be an int >= 3 (2 spatial '
                         f'+ at least 1 free), got {embed_dim!r}')
