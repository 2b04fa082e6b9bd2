"""fedfhe's ``flwr-clientapp``: the one place where a ClientApp starts on a data owner's host.

For every message, the SuperNode's SuperExec starts ``flwr-clientapp`` by bare
name from PATH. ``fedfhe-owner supernode`` puts a shim of that name first on
PATH (``fedfhe_owner.supernode.launch.write_clientapp_shim``) that runs ``main`` here.
It does what Flower 1.39's ``flwr-clientapp`` does
(flwr/supernode/runtime/run_clientapp.py), with Flower's own functions, except:

- the pulled FAB is checked against the owner's approved app digests
  (``fedfhe_common.pki.app_approval``) before anything of it is unpacked or imported;
  a refused run gets an Error reply (``ErrorCode.INVALID_FAB``, reason naming the
  owner and why), which the coordinator records for that owner;
- an approved FAB is unpacked into a fresh private directory for this task and
  loaded from there (Flower would reuse any ``$FLWR_HOME/apps`` directory whose
  name matches 8 hex digits of the FAB hash);
- runtime dependency installation never happens (hosts run installed packages).

Imports stay lean (no ``flwr.supernode.cli``, which pulls in uvicorn and
SQLAlchemy). Normally this code runs in a child forked per message by the
pre-imported ``fedfhe_owner.clientapp.clientapp_server``; it runs as its own process (the
cold path) when that server is off, not up, or declines to fork.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from logging import ERROR, INFO, WARNING
from pathlib import Path

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.args import add_args_flwr_app_common, try_obtain_flwr_app_token
from flwr.common.constant import ErrorCode, SubStatus
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import SUPERNODE_DEFAULT_CLIENT_ADDRESS
from flwr.supercore.exit import ExitCode, flwr_exit, register_signal_handlers
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.telemetry import EventType
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from fedfhe_common.pki.app_approval import ENV_OWNER, AppNotApproved, approved_from_env, check_fab


def _parser() -> argparse.ArgumentParser:
    """Flower's flwr-clientapp arguments (the SuperExec passes them)."""
    parser = argparse.ArgumentParser(prog="flwr-clientapp", description="fedfhe: run an approved Flower ClientApp")
    parser.add_argument("--runtime-api-address", default=SUPERNODE_DEFAULT_CLIENT_ADDRESS)
    add_args_flwr_app_common(parser=parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    token = try_obtain_flwr_app_token(args)
    if getattr(args, "runtime_dependency_install", False):
        log(WARNING, "fedfhe: runtime dependency installation requested; never done here (installed packages only)")
    run_task(
        runtime_api_address=args.runtime_api_address,
        token=token,
        insecure=args.insecure,
        certificates=validate_and_resolve_root_certificates(args.root_certificates, args.insecure),
        parent_pid=args.parent_pid,
        approved=approved_from_env(os.environ),
        owner=os.environ.get(ENV_OWNER, "") or "this data owner",
    )


def run_task(  # noqa: PLR0913 - mirrors Flower's run_clientapp
    runtime_api_address: str,
    token: str,
    insecure: bool,
    certificates: bytes | None,
    parent_pid: int | None,
    approved: frozenset[str],
    owner: str,
) -> None:
    """Pull one task, check its FAB, run the ClientApp, push the reply; exits the process."""
    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    retry_invoker = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=retry_invoker,
    )
    workdir = Path(tempfile.mkdtemp(prefix="fedfhe-ownerapp-"))
    heartbeat: HeartbeatSender | None = None
    message: Message | None = None
    reply: Message | None = None
    context: Context | None = None
    sub_status = SubStatus.FAILED
    details = "ClientApp task failed due to unknown reason"
    exit_code = ExitCode.SUCCESS

    def on_exit() -> None:
        retry_invoker.max_tries = 1  # do not block the exit on retries
        push_task_output(client=client, context=context, sub_status=sub_status, details=details)
        if heartbeat is not None and heartbeat.is_running:
            heartbeat.stop()
        client.close()
        shutil.rmtree(workdir, ignore_errors=True)

    register_signal_handlers(
        event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE, exit_message="Task stopped.", exit_handlers=[on_exit]
    )
    try:
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message, context, run, fab = pull_task_input(client)
        # The check comes before Flower touches the FAB: nothing unapproved is unpacked or imported.
        digest = check_fab(fab.content, fab.hash_str, approved)
        log(INFO, "fedfhe: Flower App %s approved for %s", digest[:16], owner)
        app_dir = install_from_fab(fab.content, install_dir=workdir, skip_prompt=True)
        load = get_load_client_app_fn(default_app_ref="", app_path=str(app_dir), multi_app=True)
        client_app: ClientApp = load(run.fab_id, run.fab_version, fab.hash_str)
        reply = client_app(message=message, context=context)
        sub_status, details = SubStatus.COMPLETED, ""
    except AppNotApproved as ex:
        details = f"{owner} refused the Flower App: {ex}"
        log(ERROR, "fedfhe: %s", details)
        if message is not None:
            reply = Message(Error(code=ErrorCode.INVALID_FAB, reason=details), reply_to=message)
        exit_code = ExitCode.TASK_PROC_EXCEPTION
    except Exception as ex:  # noqa: BLE001 - reported to the ServerApp as Flower does
        code, details = ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(ex)}:<'{ex}'>"
        if isinstance(ex, LoadClientAppError):
            code, details = ErrorCode.LOAD_CLIENT_APP_EXCEPTION, f"cannot load the ClientApp: {ex}"
        log(ERROR, "ClientApp raised an exception", exc_info=ex)
        if message is not None:
            reply = Message(Error(code=code, reason=details), reply_to=message)
        exit_code = ExitCode.COMMON_APP_IMPORT_ERROR if isinstance(ex, ImportError) else ExitCode.TASK_PROC_EXCEPTION
    finally:
        if reply is not None and context is not None:
            try:
                push_message(client, reply, context)
            except Exception as ex:  # noqa: BLE001
                log(ERROR, "Failed to push reply message", exc_info=ex)
                exit_code = ExitCode.CLIENTAPP_COMMUNICATION_ERROR
    flwr_exit(code=exit_code, event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
