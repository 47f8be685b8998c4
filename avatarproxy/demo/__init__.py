"""The demo tenant: ``avatarproxy demo`` and the fake Microsoft Graph it serves.

``fakegraph`` (with ``faketenant``, ``people``, ``photos`` and ``graphanswers``) is
the fake Graph the tests run the service against; ``contoso`` is the built-in
tenant the demo shows; ``serve`` runs the real service in front of it and
``page`` draws its ``GET /``. The service never imports this package: only
``cli`` does, for the ``demo`` command.
"""
