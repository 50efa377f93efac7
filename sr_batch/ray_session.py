"""Starting (or joining) Ray once a process, with a console kept to what a user must see.

Ray, Ray Data and the TensorFlow in the workers each print notices that are no error of the
run; they are filtered here (worker lines by Ray's own skip pattern, driver lines by logging
filters, a once-a-process notice spent on a throwaway actor) and kept in Ray's log files.
`-v` shows everything.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time

# Worker lines the driver does not echo (Ray's RAY_DEDUP_LOGS_SKIP_REGEX, read when `ray` is
# first imported); they stay in the workers' log files. TensorFlow 2.16+ writes absl's preamble
# and its oneDNN notice to stderr when an actor imports it, before TF_CPP_MIN_LOG_LEVEL can
# apply; on a CPU without AVX-512 FP16, oneDNN also says that half precision (which no
# sr-batch model uses) falls back to Eigen. And an idle Ray worker that Ray stops can trace
# absl mutex calls ("RAW: Lock blocking", "Unlock") as it exits: Ray's, seen without
# sr-batch's code too. A failed absl check ("RAW: Check ... failed") still shows.
QUIET_WORKER_LINES = "|".join([
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"\bport\.cc:\d+\] oneDNN custom operations are on\.",
    r"\butil\.cc:\d+\] oneDNN supports DT_HALF only on platforms with AVX-512\.",
    r"^\[mutex\.cc : \d+\] RAW: (?!Check)",
])

# Ray Data warns, once a process, that progress bars are off; the run turns them off on
# purpose (its own progress lines replace them), so the warning only alarms.
_PROGRESS_BARS_OFF = "Progress bars disabled."


def init_ray(address: str | None) -> float:
    """Start (or join) Ray once a process; return the seconds that took (0.0 where Ray was
    already up). Ray's console is kept to real errors unless -v (a DEBUG root logger) asks for
    everything; Ray's own log files keep every line."""
    quiet = not logging.getLogger().isEnabledFor(logging.DEBUG)
    # No address: a fresh local Ray ("local"), never a guess at whatever cluster
    # `ray start` last recorded on this machine (which may be stale and hang).
    # Inside a Ray job, RAY_ADDRESS names the job's cluster and wins.
    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = "local"
    if "ray" not in sys.modules:  # Ray reads these when it is imported
        if quiet:
            _skip_worker_lines(QUIET_WORKER_LINES)
        # Lines Ray forwards from workers carry ANSI colour codes even into a log file or pipe.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        if address == "local":
            # Token authentication on, named rather than left to Ray's default (which warns
            # that it chose it): even on 127.0.0.1, another user of this machine could otherwise
            # submit code to our Ray (dashboard, Jobs API) and read our images. The token is
            # ~/.ray/auth_token, made on first use; RAY_AUTH_MODE=disabled still opts out.
            os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return 0.0
    began = time.perf_counter()
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    if address == "local":
        # A one-machine Ray needs no network: Ray's single-node mode puts the node
        # (GCS, raylet, dashboard) on 127.0.0.1 instead of every interface.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Ray turns token authentication on for every new local cluster and says so in a
        # warning line on each run (ahead of a one-line error too); it stays on, unsaid.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        # Idle workers are kept, not stopped: a worker Ray stops for idling can crash as it
        # exits (absl "Mutex corrupt", SIGABRT: Ray 2.60's, seen without sr-batch's code too;
        # 3 of 9 demo runs on a busy 2-core machine) and its crash report reaches the console.
        # A local Ray ends with the run, and so do the few workers it keeps.
        os.environ.setdefault("RAY_kill_idle_workers_interval_ms", "0")
    # A local Ray lives as long as the run and its progress lines say what the dashboard would:
    # no dashboard (a second sooner, and no HTTP server). A cluster keeps its own.
    local_only = {"include_dashboard": False} if address == "local" else {}
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
             runtime_env={"env_vars": env}, configure_logging=True, **local_only)
    if quiet:
        _spend_actor_restart_notice()
        _drop_log_message("ray.data._internal.progress", _PROGRESS_BARS_OFF)
    return time.perf_counter() - began


def _skip_worker_lines(pattern: str) -> None:
    """Add `pattern` to the worker lines Ray's driver skips (before `ray` is imported)."""
    own = os.environ.get("RAY_DEDUP_LOGS_SKIP_REGEX")
    if own is None or pattern not in own:
        os.environ["RAY_DEDUP_LOGS_SKIP_REGEX"] = f"{own}|{pattern}" if own else pattern


# Ray Data starts every actor pool with its transformer and DataContext as object-ref arguments
# and restarts allowed; Ray's core worker answers the first such actor of a process with an
# ERROR line on stderr (ray-project/ray#57733). Harmless here: the refs live as long as the run.
_ACTOR_RESTART_NOTICE = "has constructor arguments in the object store and max_restarts > 0"


def _spend_actor_restart_notice() -> None:
    """Let Ray print its once-a-process actor-restart notice now, on a throwaway actor, with
    stderr pointed at a temporary file, so the actor pool does not print it on the console.

    Only that line is dropped (it stays in Ray's python-core-driver log): anything else written
    to stderr in the meantime is passed on. The actor does nothing and is killed at once.
    """
    import ray

    @ray.remote(num_cpus=0, max_restarts=1)
    class Throwaway:
        def __init__(self, _arg) -> None:
            pass

    arg = ray.put(None)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            actor = Throwaway.remote(arg)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        ray.kill(actor, no_restart=True)
        captured.seek(0)
        other = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                 if _ACTOR_RESTART_NOTICE not in line]
    sys.stderr.write("".join(other))


class _DropMessage(logging.Filter):
    """Drops the records whose message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _drop_log_message(logger_name: str, prefix: str) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in logger.filters):
        logger.addFilter(_DropMessage(prefix))
