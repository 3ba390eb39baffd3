"""python -m mirrorgan_tf.serve --model-base-path saved_models/mirrorgan [--model-name mirrorgan]
       [--port 8500] [--rest-port 8501] [--host 127.0.0.1] [--max-batch 64] [--max-message-mb 32]
       [--poll-seconds 2] [--workers 8]

Serves the highest version under the base path with TensorFlow Serving's gRPC and REST APIs and
picks up newly exported versions without a restart (see mirrorgan_tf/serving/server.py). Port 0
picks a free port; the line printed once serving names the ports. SIGINT or SIGTERM shuts down
after the requests in flight.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirrorgan_tf.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-base-path", required=True, help="folder holding numeric version folders")
    p.add_argument("--model-name", default="mirrorgan")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port")
    p.add_argument("--rest-port", type=int, default=8501, help="REST port")
    p.add_argument("--max-batch", type=int, default=64, help="captions (examples) per request at most")
    p.add_argument("--max-message-mb", type=float, default=32.0,
                   help="largest gRPC message in or out and largest REST body in or out, in MiB; answers over it "
                        "are refused before the model runs, and --max-batch answers must fit a gRPC message")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="how often to look for a new version")
    p.add_argument("--workers", type=int, default=8, help="gRPC threads, and model calls running at once")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from mirrorgan_tf.errors import MirrorganError
    from mirrorgan_tf.serving.server import ModelServer, ServerConfig

    config = ServerConfig(base_path=a.model_base_path, model_name=a.model_name, host=a.host, port=a.port,
                          rest_port=a.rest_port, max_batch=a.max_batch, max_message_mb=a.max_message_mb,
                          poll_seconds=a.poll_seconds, workers=a.workers)
    try:
        server = ModelServer(config)
        server.start()
    # MirrorganError: a flag out of range or caps that cannot fit the model (ServerSetupError);
    # OSError: a port in use, a base path that is not a directory.
    except (MirrorganError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("mirrorgan_tf.serve").warning(
            "listening on %s: reachable from other machines, with no authentication", a.host)
    try:
        version = server.registry.get().version
    except Exception:  # noqa: BLE001  (nothing loaded yet: the watcher keeps looking)
        version = None
    print(f"serving model '{a.model_name}' (version {version if version is not None else 'none yet'}) "
          f"from {a.model_base_path}: gRPC {a.host}:{server.grpc_port}, REST http://{a.host}:{server.rest_port}",
          flush=True)
    while not stop.wait(0.5):
        pass
    logging.getLogger("mirrorgan_tf.serve").info("shutting down")
    server.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
