"""The only module that touches Ray's private APIs (`ray._private`); tests/test_private_apis.py
checks each one's behaviour, so a Ray that changes them fails there, loudly.

- `enable_token_auth_if_token_available()`: Ray attaches a cluster token only with
  RAY_AUTH_MODE=token; its own helper switches that on when a token exists.
- `stop_local_monitor()`: Ray stops its GCS before the autoscaler monitor, which then
  waits on the GCS until Ray kills it a second later; killing the monitor first saves that.
"""

from __future__ import annotations

import logging

TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"


def enable_token_auth_if_token_available() -> bool:
    """Turn on token auth where a token exists (~/.ray/auth_token, RAY_AUTH_TOKEN[_PATH]) and
    RAY_AUTH_MODE is unset; True where token auth is on. False also where this Ray has no such
    helper (RAY_AUTH_MODE=token then works as documented)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return False
    logging.getLogger(TOKEN_SETUP_LOGGER).setLevel(logging.ERROR)  # its notice: we print what matters
    return bool(maybe_enable_token_auth_if_token_available(warn_if_disabled=False))


def stop_local_monitor() -> int:
    """Kill the autoscaler monitor of the Ray this process started; returns how many were stopped."""
    from ray._private import ray_constants, worker

    node = getattr(worker, "_global_node", None)
    if node is None:
        return 0
    monitors = getattr(node, "all_processes", {}).get(ray_constants.PROCESS_TYPE_MONITOR, [])
    for process_info in monitors:
        process_info.process.kill()
        process_info.process.wait()
    return len(monitors)
