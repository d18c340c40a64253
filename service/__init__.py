"""What every front door shares (the CLI now, the HTTP API next): typed requests and their
rules (``requests``), the set-up they need (``environment``), starting an operation
(``launch``), reading its status (``status``) and the library itself (``library``).

The CLI and the API import this package and ``config``, never ``flows``, ``tasks`` or
``videolib`` directly, so a rule lives in one place.
"""
