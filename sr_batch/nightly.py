"""Nightly incremental runs: list, diff against the stats, submit to a Ray cluster, stream, exit.

    sr-batch nightly SOURCE --output OUT --address http://HEAD:8265

1. takes a lock on OUT (two overlapping nightlies never both run);
2. plans the run as `sr-batch run` does (plan.py): the images new or changed since
   they last came out ok with these settings (every image with --force), written
   to OUT/manifests/<run_id>.parquet;
3. submits `python jobs/upscale.py <manifest> --output OUT --run-id <run_id> ...`
   through the Ray Jobs API (JobSubmissionClient, a working_dir runtime_env,
   submission_id = the run id);
4. streams the job's logs, refreshing the lock;
5. exits with the job's result.

With --dry-run it only plans and tells what it would submit (preview.py): no lock, no
manifest in OUT, no job.

Authentication: the Jobs API client sends the cluster's token, which Ray reads
from RAY_AUTH_TOKEN or ~/.ray/auth_token. The token is never logged, never put
in the runtime_env and never written to OUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shlex
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sr_batch import manifest, storage
from sr_batch.config import JobConfig
from sr_batch.errors import ConfigError, SrBatchError
from sr_batch.layout import OutLayout
from sr_batch.lock import DEFAULT_STALE_S, OutputLock
from sr_batch.naming import planned_outputs_column
from sr_batch.pipeline import Echo, echo_stderr
from sr_batch.plan import new_run_id, plan_run

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Refresh the lock this often while the job runs (far below any sane stale_s).
REFRESH_S = 60.0
# Every Jobs API request waits at most this long for a connection and for each answer.
# The SDK sets no timeout, so a head that accepts connections and never answers (a hung
# dashboard, a proxy with no backend) would hang the nightly, and hold its lock, for good.
JOBS_API_CONNECT_S = 10.0
JOBS_API_READ_S = 20.0
# With no log line for this long, ask for the job's status: is the API still there?
LOG_SILENCE_S = 60.0
# After the job was submitted, keep asking for its status through errors this long.
FOLLOW_PATIENCE_S = 60.0


class JobSubmitError(SrBatchError):
    error_type = "job_submit_error"


@dataclass(frozen=True)
class NightlyResult:
    run_id: str
    listed: int
    todo: int
    job_status: str | None
    exit_code: int


def job_entrypoint(manifest_uri: str, config: JobConfig, run_id: str, options: list[str]) -> str:
    """The command the cluster runs: the thin job entry point with the user's options."""
    args = ["python", "jobs/upscale.py", manifest_uri, "--output", storage.to_uri(config.output),
            "--run-id", run_id, *options]
    return " ".join(shlex.quote(a) for a in args)


def working_dir() -> tuple[str, str | None]:
    """(directory to upload as the job's working_dir, temp dir to delete afterwards or None).

    Only the library and the entry point travel: never a virtualenv, outputs or tokens.
    """
    tmp = tempfile.mkdtemp(prefix="sr-batch-job-")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PROJECT_ROOT / "sr_batch", Path(tmp) / "sr_batch", ignore=ignore)
    (Path(tmp) / "jobs").mkdir()
    entry = PROJECT_ROOT / "jobs" / "upscale.py"
    if entry.exists():
        shutil.copy(entry, Path(tmp) / "jobs" / "upscale.py")
    else:  # installed from a wheel: write the same thin entry point
        (Path(tmp) / "jobs" / "upscale.py").write_text(
            "import sys\nsys.path.insert(0, '.')\nfrom sr_batch.cli import main\n"
            "sys.exit(main(['run', *sys.argv[1:]]))\n")
    return tmp, tmp


def run_nightly(config: JobConfig, address: str, options: list[str], *,
                stale_s: float = DEFAULT_STALE_S, echo: Echo = echo_stderr) -> NightlyResult:
    """Build the incremental manifest and run it as a Ray job; see the module docstring."""
    if config.dry_run:  # a plan-only config must never submit, whoever calls
        raise ConfigError("a dry run only plans: call sr_batch.preview.dry_run(config, command='nightly')")
    run_id = config.run_id or new_run_id()
    layout = OutLayout.of(config.output)
    # The Jobs SDK is imported before SIGTERM is caught: a signal inside its compiled
    # modules' import would be dropped, and before the lock is taken none is needed.
    _bounded_client_class()
    with _SigtermAsInterrupt() as sigterm, OutputLock(layout.lock, stale_s,
                                                      purpose=f"sr-batch nightly {run_id}") as lock:
        # The cluster sizes its own calls and probes a user's model file: no header reads
        # and no TensorFlow here (an unprobed file's earlier outputs match any overlap).
        plan = plan_run(config, run_id=run_id, probe=None, size_calls=False)
        listed, todo = plan.listed.num_rows, plan.todo.num_rows
        what = "submitted again (--force)" if config.force else "new or changed"
        echo(f"nightly {run_id}: {listed} images listed, {todo} {what}")
        if todo == 0:
            echo(f"nightly {run_id}: nothing to do; no job submitted")
            return NightlyResult(run_id, listed, 0, None, 0)
        manifest_uri = layout.manifest(run_id)
        # The rows carry the names the full plan gave them: the job, seeing these rows alone,
        # must not give a skipped row's output name to another.
        rows = plan.todo.set_column(plan.todo.schema.get_field_index("planned_outputs"), "planned_outputs",
                                    planned_outputs_column(plan.todo))
        manifest.write_manifest(rows.select(manifest.MANIFEST_SCHEMA.names), manifest_uri)
        sigterm.check()
        status = _submit_and_follow(address, job_entrypoint(manifest_uri, config, run_id, options),
                                    run_id, lock, echo, sigterm.check)
    exit_code = {"SUCCEEDED": 0, "FAILED": 1}.get(status, 3)
    echo(f"nightly {run_id}: job {status}; {todo} images submitted")
    return NightlyResult(run_id, listed, todo, status, exit_code)


def enable_token_auth() -> None:
    """Turn on Ray's token mode for this client when a token is at hand.

    Ray's clients send the cluster token only with RAY_AUTH_MODE=token; a user
    who has the token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)
    should not also have to know that switch. An explicit RAY_AUTH_MODE wins.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"


class _SigtermAsInterrupt:
    """Let SIGTERM (cron's `timeout`, `kill`) unwind like Ctrl-C: the lock is released and
    the job stopped, where the default action would end the process and leave both.

    The signal is also remembered: an interrupt raised inside a C extension's callback
    (an import's module patching, for one) is printed and dropped by Python, so the
    steps between Jobs API calls ask `check()`, and an error that ends the block after
    a SIGTERM is reported as the interrupt it follows.
    """

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self) -> "_SigtermAsInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._interrupt)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        if self.received and exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            raise KeyboardInterrupt from exc

    def _interrupt(self, signum, frame):
        self.received = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise the interrupt of a SIGTERM that arrived where it could not be raised."""
        if self.received:
            raise KeyboardInterrupt


@functools.cache
def _bounded_client_class():
    """JobSubmissionClient whose every HTTP request has connect and read timeouts."""
    enable_token_auth()  # before the import: Ray reads its auth mode as it loads
    from ray.job_submission import JobSubmissionClient

    class BoundedJobSubmissionClient(JobSubmissionClient):
        # Every SDK call (the version check in __init__, submit, status, stop, uploads)
        # goes through _do_request, which passes its keyword arguments to requests.
        def _do_request(self, method, endpoint, **kwargs):
            kwargs.setdefault("timeout", (JOBS_API_CONNECT_S, JOBS_API_READ_S))
            return super()._do_request(method, endpoint, **kwargs)

    return BoundedJobSubmissionClient


def _failure_text(exc: BaseException) -> str:
    """One line for a failed Jobs API call; timeouts say how long was waited."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"timed out after {JOBS_API_CONNECT_S:g} s (no connection)"
    if isinstance(exc, (requests.exceptions.Timeout, TimeoutError)):
        return f"timed out after {JOBS_API_READ_S:g} s (connected, no answer)"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return storage.display(text)


def _client(address: str):
    enable_token_auth()
    try:
        return _bounded_client_class()(address)
    except Exception as exc:  # noqa: BLE001 - connection and auth errors come in many types
        text = _failure_text(exc)
        hint = ""
        if "401" in text or "403" in text or "auth" in text.lower() or "token" in text.lower():
            hint = " (set RAY_AUTH_TOKEN or ~/.ray/auth_token to the cluster's token)"
        raise JobSubmitError(
            f"cannot reach the Ray Jobs API at {storage.display(address)}: {text}{hint}") from None


def _submit_and_follow(address: str, entrypoint: str, run_id: str, lock: OutputLock,
                       echo: Echo, check_interrupt=lambda: None) -> str:
    client = _client(address)
    check_interrupt()
    workdir, cleanup = working_dir()
    submission_id = f"sr-batch-{run_id}"
    try:
        _submit(client, entrypoint, submission_id, workdir, run_id, address)
    finally:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
    echo(f"nightly {run_id}: submitted job {submission_id} to {storage.display(address)}")
    try:
        check_interrupt()
        try:
            asyncio.run(_stream_logs(client, submission_id, lock, echo))
        except JobSubmitError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken log stream is not a failed job
            echo(f"nightly {run_id}: lost the job's log stream ({_failure_text(exc)}); "
                 "waiting for its status")
        return _wait(client, submission_id, lock, address, check_interrupt)
    except KeyboardInterrupt:
        try:
            client.stop_job(submission_id)
            echo(f"nightly {run_id}: interrupted; asked the cluster to stop {submission_id}")
        except Exception as exc:  # noqa: BLE001 - the interrupt is what the user must see
            echo(f"nightly {run_id}: interrupted; could not ask the cluster to stop "
                 f"{submission_id} ({_failure_text(exc)}): ray job stop {submission_id}")
        raise


# A head that has just started answers "No available agent to submit job, please
# try again later" until its job agent is up; keep asking for this long.
SUBMIT_PATIENCE_S = 90.0


def _submit(client, entrypoint: str, submission_id: str, workdir: str, run_id: str,
            address: str = "the cluster") -> None:
    """Submit, retrying while the cluster says to try again later."""
    import requests

    deadline = time.monotonic() + SUBMIT_PATIENCE_S
    delay = 1.0
    while True:
        try:
            client.submit_job(entrypoint=entrypoint, submission_id=submission_id,
                              runtime_env={"working_dir": workdir},
                              metadata={"sr_batch_run_id": run_id})
            return
        except (requests.exceptions.Timeout, TimeoutError) as exc:
            raise JobSubmitError(
                f"cannot reach the Ray Jobs API at {storage.display(address)}: {_failure_text(exc)} "
                f"while submitting {submission_id}; if it went through, `ray job status "
                f"{submission_id}` shows it") from None
        except Exception as exc:  # noqa: BLE001 - the SDK raises RuntimeError with the HTTP text
            text = _failure_text(exc)
            if "already exists" in text and delay > 1.0:
                return  # an earlier attempt went through before its answer was lost
            if "try again" not in text.lower() or time.monotonic() + delay > deadline:
                raise JobSubmitError(f"job submission failed: {text}") from None
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _status_name(status) -> str:
    """'SUCCEEDED', 'RUNNING', ... from the SDK's JobStatus (a str enum)."""
    return str(getattr(status, "value", status))


async def _stream_logs(client, submission_id: str, lock: OutputLock, echo: Echo) -> None:
    """Echo the job's log lines until the stream ends, refreshing the lock.

    The SDK's log stream has no timeout of its own: after LOG_SILENCE_S without a line,
    the job's status is asked (a bounded request) so that a dead API ends the stream with
    an error, and a job that ended while its stream hangs ends it too.
    """
    logs = client.tail_job_logs(submission_id).__aiter__()
    last_refresh = time.monotonic()
    step = None
    try:
        while True:
            step = asyncio.ensure_future(logs.__anext__())
            while not (await asyncio.wait({step}, timeout=LOG_SILENCE_S))[0]:
                status = await asyncio.to_thread(client.get_job_status, submission_id)
                if _status_name(status) in _TERMINAL:
                    return  # the job is over; its stream hangs: _wait reads the result
                if time.monotonic() - last_refresh > REFRESH_S:
                    lock.refresh()
                    last_refresh = time.monotonic()
            try:
                chunk = step.result()
            except StopAsyncIteration:
                return
            for line in chunk.splitlines():
                echo(f"  | {line}")
            if time.monotonic() - last_refresh > REFRESH_S:
                lock.refresh()
                last_refresh = time.monotonic()
    finally:
        if step is not None and not step.done():
            step.cancel()
            with contextlib.suppress(BaseException):
                await step


def _wait(client, submission_id: str, lock: OutputLock, address: str = "the cluster",
          check_interrupt=lambda: None) -> str:
    """Final status; tail_job_logs ends with the job, but the status can lag a moment.

    Errors are retried for FOLLOW_PATIENCE_S (a head restarting); then the job is given
    up on with one line, since it may still be running on the cluster.
    """
    last_refresh = time.monotonic()
    failing_since = None
    while True:
        try:
            status = _status_name(client.get_job_status(submission_id))
            failing_since = None
        except Exception as exc:  # noqa: BLE001 - timeouts, refused connections, HTTP errors
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since >= FOLLOW_PATIENCE_S:
                raise JobSubmitError(
                    f"lost the Ray Jobs API at {storage.display(address)} while following "
                    f"{submission_id}: {_failure_text(exc)}; the job may still be running "
                    f"(ray job status {submission_id})") from None
            status = None
        if status in _TERMINAL:
            return status
        if time.monotonic() - last_refresh > REFRESH_S:
            lock.refresh()
            last_refresh = time.monotonic()
        check_interrupt()
        time.sleep(1.0)
