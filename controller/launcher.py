"""Start the router controller app (controller/app.py) on os-ken 4.x or ryu 4.34.

os-ken 4.x ships no ``osken-manager``; this does what that manager did, in a few lines:
patch the hub, register the ``app`` option, parse ``CONF``, ``AppManager.run_apps``. ryu
4.34 (if installed, and asked for or os-ken is missing) starts the same way.

    python -m controller.launcher --config routers.json \\
        [--ofp-listen-host 127.0.0.1] [--ofp-port 6653] [--rest unix:/tmp/x/rest.sock] \\
        [--log-file FILE] [--verbose] [--framework os_ken|ryu]

SIGTERM or SIGINT closes the REST endpoint and exits at once (os-ken's native hub cannot
stop its threads). The exit status is 2 for a bad config or command line, 3 when no
framework is installed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import signal
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

log = logging.getLogger("sendlab.controller.launcher")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m controller.launcher",
                                 description="sendlab's OpenFlow router controller")
    ap.add_argument("--config", required=True, help="controller JSON config (routers)")
    ap.add_argument("--ofp-listen-host", default="127.0.0.1",
                    help="OpenFlow listen address (default 127.0.0.1)")
    ap.add_argument("--ofp-port", type=int, default=6653, help="OpenFlow TCP port (6653)")
    ap.add_argument("--rest", default=None, help="REST endpoint: tcp:HOST:PORT or unix:PATH")
    ap.add_argument("--framework", choices=("os_ken", "ryu"), default=None,
                    help="default: os_ken if installed, else ryu")
    ap.add_argument("--log-file", default=None, help="log here instead of stderr")
    ap.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return ap.parse_args(argv)


def _setup_logging(args: argparse.Namespace) -> None:
    handler = (logging.FileHandler(args.log_file) if args.log_file
               else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if args.verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _setup_logging(args)
    if _REPO not in sys.path:
        sys.path.insert(0, _REPO)

    fw_name = args.framework or next(
        (n for n in ("os_ken", "ryu") if importlib.util.find_spec(n) is not None), None)
    if fw_name is None or importlib.util.find_spec(fw_name) is None:
        log.error("no OpenFlow controller framework: install os-ken "
                  "(scripts/install-emulation.sh) or ryu 4.34")
        return 3
    os.environ["SENDLAB_OF_FRAMEWORK"] = fw_name  # controller.app binds to the same one
    # What osken-manager / ryu-manager did first: patch the hub before anything else of the
    # framework is imported (a no-op for os-ken's native hub; eventlet for ryu).
    importlib.import_module(f"{fw_name}.lib.hub").patch(thread=False)

    import controller.app as app  # binds to fw_name, registers the [sendlab] options
    if app.FRAMEWORK is None:
        log.error("%s", app.FRAMEWORK_ERROR)
        return 3
    fw = app.FRAMEWORK
    try:
        app.load_config(args.config)  # fail here, with the file and field, not in the app
    except app.ConfigError as exc:
        log.error("%s", exc)
        return 2
    cfg = fw.cfg
    cfg.CONF.register_cli_opts([
        cfg.ListOpt("app-lists", default=[], help="application module names to run"),
        cfg.MultiStrOpt("app", positional=True, default=[], help="application module name"),
    ])
    version = getattr(sys.modules.get(fw.name), "__version__", "?")
    cfg.CONF(args=["--ofp-listen-host", args.ofp_listen_host,
                   "--ofp-tcp-listen-port", str(args.ofp_port), "controller.app"],
             project=fw.name, version=f"sendlab launcher ({fw.name} {version})")
    cfg.CONF.set_override("config", os.path.abspath(args.config), group="sendlab")
    if args.rest:
        cfg.CONF.set_override("rest", args.rest, group="sendlab")

    def stop(signum, _frame):
        log.info("signal %d: stopping", signum)
        # Should closing hang, SIGALRM's default action ends the process in 3 s anyway.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(3)
        try:
            app.close_all()
        finally:
            logging.shutdown()
            os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("%s %s: OpenFlow on %s:%d, app %s", fw.name, version, args.ofp_listen_host,
             args.ofp_port, cfg.CONF.app)
    try:
        fw.app_manager.AppManager.run_apps(cfg.CONF.app_lists + cfg.CONF.app)
    except app.ConfigError as exc:
        log.error("%s", exc)
        return 2
    except Exception:
        log.exception("controller failed")
        return 1
    finally:
        app.close_all()
    return 0


if __name__ == "__main__":
    # os._exit so that os-ken's non-daemon hub threads cannot keep a failed start alive.
    code = main()
    logging.shutdown()
    os._exit(code)
