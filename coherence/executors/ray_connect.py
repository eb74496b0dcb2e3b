"""Reaching a Ray cluster within a timeout, the versions a worker must share with the driver,
and a task's reply read back as one sentence per failure. Ray is imported only inside
``connect`` and ``get_reply``."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import coherence
from coherence.executors import ClusterError, ClusterUnreachable, VersionMismatch

TIMEOUT_ENV = "COHERENCE_RAY_TIMEOUT"


def env_number(name: str, default: float, *, minimum: float = 0.0) -> float:
    """A numeric setting from the environment (``default`` when unset), refused in one
    sentence naming the variable when it is not a number ≥ ``minimum``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = minimum - 1
    if not value >= minimum:
        raise ClusterError(f"{name}={text!r}: expected a number ≥ {minimum:g}")
    return value


def worker_versions() -> dict[str, str]:
    """What must agree between driver and worker for a unit to land in the same cache entry."""
    from coherence.cache.keys import ANALYSIS_CODE_VERSION

    return {"coherence": coherence.__version__, "analysis_code": ANALYSIS_CODE_VERSION}


def check_versions(worker: Mapping[str, Any], where: str) -> None:
    """Refuse a reply from a worker whose versions differ from this driver's."""
    mine = worker_versions()
    if dict(worker) != mine:
        theirs = ", ".join(f"{k} {worker.get(k)!r}" for k in mine)
        ours = ", ".join(f"{k} {v!r}" for k, v in mine.items())
        raise VersionMismatch(
            f"{where}: the Ray worker runs {theirs} but this driver runs {ours}; install the "
            f"same coherence-explorer ({coherence.__version__}, the same checkout) on every node "
            "(pip install -e '.[cluster]') and restart its Ray workers"
        )


def get_reply(ray: Any, ref: Any, where: str, *, retries: int) -> dict[str, Any]:
    """ray.get with every failure turned into one sentence naming ``where`` (``retries``: how
    often Ray retried a dead worker), and the reply's versions checked against this driver."""
    from ray import exceptions

    from coherence.errors import CoherenceError

    try:
        reply = ray.get(ref)
    except exceptions.RayTaskError as error:
        cause = error.cause
        if isinstance(cause, CoherenceError):
            raise ClusterError(f"{where}: {cause}", worker_error=cause) from None
        if isinstance(cause, ImportError):
            raise ClusterError(
                f"{where}: the Ray worker cannot import what it needs ({cause}); install "
                f"coherence-explorer {coherence.__version__} with the [cluster] extra on "
                "every node"
            ) from None
        first = (str(cause).strip().splitlines() or [""])[0]
        raise ClusterError(
            f"{where} failed on the Ray cluster: {type(cause).__name__}: {first}"
        ) from None
    except exceptions.TaskCancelledError:
        raise ClusterError(f"{where} was cancelled on the Ray cluster") from None
    except (exceptions.LocalRayletDiedError, exceptions.RaySystemError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ClusterError(  # not a worker's death, which retries cover: no retry was made
            f"the Ray cluster went away while computing ({type(error).__name__}: "
            f"{first[:200]}; the first unit it reported lost: {where}); what finished is "
            "kept (cached units, written checkpoints): start the cluster again (or drop "
            "--ray-address) and rerun to resume"
        ) from None
    except exceptions.RayError as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ClusterError(
            f"{where} failed on the Ray cluster after {retries} retries "
            f"({type(error).__name__}: {first[:200]}); what finished is kept (cached units, "
            "written checkpoints): run it again to resume"
        ) from None
    check_versions(reply.get("versions", {}), where)
    return reply


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a HOST:PORT or ray://HOST:PORT address; None for auto / local."""
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep:
        return None
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


AUTH_MODE_ENV = "RAY_AUTH_MODE"


def _token_at_hand() -> bool:
    """Whether Ray's token for token authentication is here: ``RAY_AUTH_TOKEN``, the file
    ``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token`` (where a local ``ray.init()``
    writes one)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return True
    named = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    return (Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token").is_file()


def _use_token_auth_if_at_hand() -> None:
    """Why: ``ray start --head`` turns token authentication on when a token is at hand and
    ``RAY_AUTH_MODE`` is unset (Ray ≥ 2.5x), but a driver's ``ray.init(address=…)`` does not,
    and then hangs against that cluster as if nothing answered (seen with a token a local
    ``ray.init()`` had left in ~/.ray). Do for the driver what ``ray start`` does for the
    head; a token-mode driver connects to a cluster without authentication as well. An
    explicit ``RAY_AUTH_MODE`` is left as it is."""
    if os.environ.get(AUTH_MODE_ENV) is not None or not _token_at_hand():
        return
    os.environ[AUTH_MODE_ENV] = "token"  # read when ray is first imported, and by children
    try:  # ray imported already: refresh its cached config, as `ray start` does (Ray 2.60)
        from ray._private.authentication import authentication_token_setup

        authentication_token_setup._enable_token_auth()
    except (ImportError, AttributeError):
        pass


def connect(address: str, timeout: float | None = None) -> Any:
    """The ``ray`` module, connected to ``address`` (a connection made earlier in this process
    is reused). Raises ClusterUnreachable within ``timeout`` seconds when nothing answers."""
    _use_token_auth_if_at_hand()
    try:
        import ray
    except ImportError:
        raise ClusterUnreachable(
            f"--ray-address {address}: Ray is not installed here; install it with "
            "pip install -e '.[cluster]' from the checkout (on this machine and every node)"
        ) from None
    if ray.is_initialized():
        _refuse_another_cluster(ray, address)
        return ray
    timeout = env_number(TIMEOUT_ENV, 10.0, minimum=0.1) if timeout is None else timeout
    endpoint = _host_port(address)
    fix = (
        "start it with `ray start --head` there, or correct --ray-address / "
        "COHERENCE_RAY_ADDRESS (unset it to compute locally)"
        if endpoint is not None or address == "auto"
        else "write --ray-address / COHERENCE_RAY_ADDRESS as HOST:PORT (the head's GCS port, "
        "6379 by default), ray://HOST:PORT or auto (unset it to compute locally)"
    )
    if endpoint is not None:
        try:
            socket.create_connection(endpoint, timeout=timeout).close()
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise ClusterUnreachable(
                f"cannot reach the Ray cluster at {address} ({reason}); {fix}"
            ) from None
    outcome: dict[str, BaseException] = {}

    def init() -> None:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except BaseException as error:  # reported below, in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=init, name="ray-connect", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ClusterUnreachable(
            f"the Ray cluster at {address} did not answer within {timeout:g} s (is it a Ray "
            f"head's GCS port, 6379 by default?{_token_hint()}); {fix}"
        )
    if "error" in outcome:
        error = outcome["error"]
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ClusterUnreachable(f"cannot connect to the Ray cluster at {address} ({first}); {fix}")
    _CONNECTED["address"] = address
    return ray


_CONNECTED: dict[str, str] = {}  # the address this process's connect() reached


def _refuse_another_cluster(ray: Any, address: str) -> None:
    """A process holds one Ray connection; asked for another cluster, it used to return the
    first one in silence and compute there. A connection this module did not make (inside a
    Ray worker) is taken as it is."""
    made = _CONNECTED.get("address")
    if made is None or _same_endpoint(made, address):
        return
    try:
        actual = ray.get_runtime_context().gcs_address
    except Exception:  # an older Ray or a client connection: the address as given decides
        actual = None
    if actual is not None and _same_endpoint(actual, address):
        return
    raise ClusterUnreachable(
        f"this process is already connected to the Ray cluster at {made}, not {address}: "
        "a process connects to one cluster; run the work for the other one in a process of "
        "its own (another coherence command)"
    )


def _same_endpoint(a: str, b: str) -> bool:
    """Whether two addresses may name one cluster: the same host (names resolved, so
    localhost is 127.0.0.1) and port, ray:// or not; 'auto' (no port to compare) is taken
    as the same, as before this check."""
    ends = [_host_port(x) for x in (a, b)]
    if None in ends:
        return a == b or "auto" in (a, b)
    (host_a, port_a), (host_b, port_b) = ends
    return port_a == port_b and _resolved(host_a) == _resolved(host_b)


def _resolved(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def _token_hint() -> str:
    """What to check when a cluster hangs up on a driver that has no token to show."""
    if os.environ.get(AUTH_MODE_ENV, "").lower() == "token":
        return " Is this machine's Ray token the cluster's?"
    return (
        " A cluster with token authentication needs its token here: set RAY_AUTH_TOKEN or "
        "copy the head's ~/.ray/auth_token"
    )


_REMOTE: dict[str, Any] = {}


def _remote(ray: Any, function: Callable) -> Any:
    """``ray.remote(function)``, made once per process (Ray exports it once)."""
    if function.__name__ not in _REMOTE:
        _REMOTE[function.__name__] = ray.remote(function)
    return _REMOTE[function.__name__]
