"""Sustained frame rate and latency of ``breastus-live`` at a fixed input frame rate.

Plays PLUS Server: opens an OpenIGTLink server on 127.0.0.1, starts
``breastus-live`` (a separate process, the real command) as its client, and
streams a simulated sweep (a window panning across a sample image) at ``--fps``
for ``--seconds``. Every reply (label IMAGE) is matched to its frame by the
timestamp it echoes. Prints: frames sent, frames answered (the others were
dropped because breastus-live was busy), the sustained rate of answers, and the
latency from sending a frame to receiving its label (median, 95th percentile).

    .venv/bin/python benchmarks/live_benchmark.py --fps 30 --seconds 30
"""

from __future__ import annotations

import argparse
import os
import platform
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyigtl
from pyigtl.messages import MessageBase
from PIL import Image

from BreastUSSegmentLib.live import HEADER_SIZE

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "BreastUSSegment" / "Resources" / "Samples" / "breastus_sample_benign.png"


def sweep(frames: int, window: float = 0.6) -> list[np.ndarray]:
    """``frames`` grey frames: a window of ``window`` of the sample's width panning left to right and back."""
    image = np.asarray(Image.open(SAMPLE).convert("L"))
    width = image.shape[1]
    span = int(window * width)
    positions = np.abs(np.linspace(-1.0, 1.0, frames)) * (width - span)
    return [np.ascontiguousarray(image[:, int(start):int(start) + span]) for start in positions]


def receive(connection: socket.socket, arrivals: dict, stop: threading.Event) -> None:
    """Record when each label reply arrives, by the timestamp it echoes."""
    buffer = b""
    while not stop.is_set():
        if not select.select([connection], [], [], 0.1)[0]:
            continue
        try:
            data = connection.recv(1 << 20)
        except OSError:
            return
        if not data:
            return
        now = time.perf_counter()
        buffer += data
        while len(buffer) >= HEADER_SIZE:
            header = MessageBase.parse_header(buffer[:HEADER_SIZE])
            if len(buffer) < HEADER_SIZE + header["body_size"]:
                break
            buffer = buffer[HEADER_SIZE + header["body_size"]:]
            if header["message_type"] == "IMAGE":
                arrivals[round(header["timestamp"], 3)] = now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fps", type=float, default=30.0, help="input frame rate (default 30)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to stream (default 30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds streamed before measuring (default 5)")
    parser.add_argument("--weights", help="model .safetensors (default: the bundled one)")
    args = parser.parse_args()

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    command = [sys.executable, "-m", "BreastUSSegmentLib.live", "--port", str(port), "--device", "cpu"]
    if args.weights:
        command += ["--weights", args.weights]
    live = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        listener.settimeout(120)
        connection, _ = listener.accept()
        connection.settimeout(None)  # the sender blocks while breastus-live is not reading
        frames = sweep(int(args.fps * 4))
        matrix = np.diag([0.1, 0.1, 1.0, 1.0])
        arrivals: dict = {}
        stop = threading.Event()
        receiver = threading.Thread(target=receive, args=(connection, arrivals, stop), daemon=True)
        receiver.start()
        first = pyigtl.ImageMessage(frames[0][np.newaxis], ijk_to_world_matrix=matrix, timestamp=999.0,
                                    device_name="Image_Reference")
        connection.sendall(first.pack())  # the clock starts once the model is loaded and has answered
        ready = time.perf_counter()
        while 999.0 not in arrivals and time.perf_counter() - ready < 300:
            time.sleep(0.01)
        sent = {}
        period = 1.0 / args.fps
        start = time.perf_counter()
        warmup_frames = int(round(args.fps * args.warmup))
        for index in range(warmup_frames + int(round(args.fps * args.seconds))):
            time.sleep(max(0.0, start + index * period - time.perf_counter()))
            timestamp = 1000.0 + index * period
            message = pyigtl.ImageMessage(frames[index % len(frames)][np.newaxis], ijk_to_world_matrix=matrix,
                                          timestamp=timestamp, device_name="Image_Reference")
            packed = message.pack()
            sent_at = time.perf_counter()
            connection.sendall(packed)
            if index >= warmup_frames:
                sent[round(timestamp, 3)] = sent_at
        time.sleep(2.0)  # the last replies
        stop.set()
    finally:
        live.terminate()
        log = live.communicate(timeout=30)[1]
        listener.close()
    if os.environ.get("LIVE_LOG"):
        print(log, file=sys.stderr)
        print(sorted(arrivals)[:5], sorted(sent)[:5], file=sys.stderr)
    if 999.0 not in arrivals:
        print(f"breastus-live did not answer; its log:\n{log}", file=sys.stderr)
        return 1
    answered = {stamp: arrivals[stamp] - sent_at for stamp, sent_at in sent.items() if stamp in arrivals}
    latencies = np.array(sorted(answered.values())) * 1000.0
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; torch threads: default")
    print(f"input: {args.fps:g} fps for {args.seconds:g} s (after {args.warmup:g} s warm-up), "
          f"frames {frames[0].shape[1]} x {frames[0].shape[0]}")
    print(f"frames sent {len(sent)}, answered {len(answered)}, dropped {len(sent) - len(answered)}")
    print(f"sustained: {len(answered) / args.seconds:.1f} frames/s")
    if len(latencies):
        print(f"latency send -> label: median {np.median(latencies):.0f} ms, "
              f"95th percentile {np.percentile(latencies, 95):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
