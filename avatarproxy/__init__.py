"""avatarproxy: Microsoft 365 profile photos for ``<img>`` tags.

Layers point one way: ``web`` -> ``service`` -> ports (``graph``, ``cache``,
``imaging``); ``app`` is the composition root that wires them.
"""

__version__ = "0.1.0"
