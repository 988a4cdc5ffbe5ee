"""A faithful local stand-in for Azure's IMDS (and, later, the ARM network subset) for tests and demos.

Shaped after the verbatim payloads in ``shared/azure-examples``. Scriptable over HTTP under
``/_emulator/`` (see ``control.py``).
"""
