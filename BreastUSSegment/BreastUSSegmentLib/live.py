"""``breastus-live``: segment a live ultrasound stream received over OpenIGTLink.

Connects as a client to an OpenIGTLink server (PLUS Server, or Slicer's
OpenIGTLinkIF), reads the IMAGE messages of one device, segments the newest
frame, and sends back the lesion as a label IMAGE (0/1, same size and
ijk-to-world matrix, same timestamp) and the measurements as a STRING (JSON).
Replies go back on the same connection, or, with ``--reply-port``, to whoever
connects to a server this process opens on that port. Frames are never queued:
whatever arrived while a frame was being segmented is read, and only the newest
image is kept. A lost connection is retried every ``--retry`` seconds and
reported; a message that cannot be decoded is skipped with a log line. See the
README ("Live ultrasound") for the wiring with PLUS and Slicer.

pyigtl (PyPI) encodes and decodes the messages; the socket is handled here.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import BUNDLED_WEIGHTS
from .device import DEVICE_CHOICES
from .measure import measure_lesion

logger = logging.getLogger("breastus-live")

HEADER_SIZE = 58  # an OpenIGTLink message header
MAX_BODY_BYTES = 1 << 30  # a larger body is taken for a broken stream, not an image
REPORT_SECONDS = 10.0  # how often the frame rate is logged


@dataclass
class LiveSettings:
    """Where to read frames, where replies go and under which names."""

    host: str = "127.0.0.1"
    port: int = 18944
    input_device: str = "Image_Reference"
    label_device: str = "BreastUS_Lesion"
    text_device: str = "BreastUS_Measurement"
    reply_port: Optional[int] = None  # None: reply on the input connection
    retry_seconds: float = 1.0


class MessageReader:
    """A client connection that reads whole OpenIGTLink messages and sends replies; reconnects when lost."""

    def __init__(self, host: str, port: int, retry_seconds: float, stop: threading.Event):
        self.host, self.port, self.retry_seconds, self.stop = host, port, retry_seconds, stop
        self.socket: Optional[socket.socket] = None
        self.buffer = b""
        self.connections = 0  # connections made so far

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self) -> bool:
        """Connect, retrying every ``retry_seconds`` with a log line per failure, until connected or stopped."""
        while not self.stop.is_set():
            try:
                self.socket = socket.create_connection((self.host, self.port), timeout=self.retry_seconds)
                self.socket.settimeout(0.2)
                self.buffer = b""
                self.connections += 1
                logger.info("connected to %s", self.address)
                return True
            except OSError as error:
                logger.warning("cannot connect to %s (%s); retrying in %g s", self.address,
                               error.strerror or error, self.retry_seconds)
                self.stop.wait(self.retry_seconds)
        return False

    def lost(self, reason: str) -> None:
        """Report a lost connection and close it; the next :meth:`newest_image` reconnects."""
        logger.warning("connection to %s lost (%s); reconnecting", self.address, reason)
        self.close()

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
        self.socket = None

    def newest_image(self, device: str):
        """Wait for messages and return ``(newest IMAGE of device, images of it dropped)`` from all that arrived.

        Returns ``(None, 0)`` when nothing arrived within a short wait (or on stop).
        """
        if self.socket is None and not self.connect():
            return None, 0
        images = []
        wait = True  # block (briefly) for the first bytes; then take only what is already there
        while True:
            try:
                data = self.socket.recv(1 << 20) if wait else self._recv_ready()
            except socket.timeout:
                data = None
            except OSError as error:
                self.lost(error.strerror or str(error))
                return None, 0
            if data == b"":
                self.lost("closed by the other side")
                return self._newest(images)
            if data is None:
                if images or wait:
                    return self._newest(images)
                wait = True  # a message is still incomplete: wait for the rest
                continue
            self.buffer += data
            try:
                images.extend(message for message in self._messages() if message.device_name == device)
            except ValueError as error:
                self.lost(str(error))
                return self._newest(images)
            wait = False

    @staticmethod
    def _newest(images: list):
        return (images[-1], len(images) - 1) if images else (None, 0)

    def _recv_ready(self) -> Optional[bytes]:
        """The bytes already waiting on the socket, without waiting (None when there are none)."""
        self.socket.setblocking(False)
        try:
            return self.socket.recv(1 << 20)
        except BlockingIOError:
            return None
        finally:
            self.socket.settimeout(0.2)

    def _messages(self):
        """Decode the whole IMAGE messages in the buffer (others are read past); keep what is incomplete."""
        from pyigtl.messages import CRC64, MessageBase

        while len(self.buffer) >= HEADER_SIZE:
            try:
                header = MessageBase.parse_header(self.buffer[:HEADER_SIZE])
            except Exception as error:  # undecodable header: the stream cannot be followed any further
                raise ValueError(f"unreadable message header ({error})") from None
            size = header["body_size"]
            if size > MAX_BODY_BYTES:
                raise ValueError(f"a message announces a body of {size:,} bytes")
            if len(self.buffer) < HEADER_SIZE + size:
                return
            body = self.buffer[HEADER_SIZE:HEADER_SIZE + size]
            crc = int.from_bytes(self.buffer[50:58], "big")
            self.buffer = self.buffer[HEADER_SIZE + size:]
            if header["message_type"] != "IMAGE":
                continue
            if CRC64(body) != crc:
                logger.warning("skipped a malformed IMAGE message from %r: its checksum does not match",
                               header["device_name"])
                continue
            message = MessageBase.create_message("IMAGE")
            try:
                message.unpack(header, body)
            except Exception as error:  # any decoding failure of one message: skip it
                logger.warning("skipped a malformed IMAGE message from %r: %s: %s", header["device_name"],
                               type(error).__name__, error)
                continue
            yield message

    def send(self, message) -> None:
        if self.socket is None:
            return
        try:
            self.socket.sendall(message.pack())
        except OSError as error:
            self.lost(error.strerror or str(error))


def frame_of(message) -> np.ndarray:
    """The ``(H, W)`` or ``(H, W, C)`` frame of an IMAGE message; ValueError for a volume of several slices."""
    image = message.image
    if image.ndim not in (3, 4) or image.shape[0] != 1:
        raise ValueError(f"expected a 2-D frame, got an image of size {image.shape[::-1][-3:]} (i, j, k)")
    if image.ndim == 4 and image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected 1, 3 or 4 components per pixel, got {image.shape[-1]}")
    frame = image[0]
    return frame[..., 0] if frame.ndim == 3 and frame.shape[-1] == 1 else frame


def spacing_of(matrix: np.ndarray) -> tuple[float, float]:
    """``(row_mm, column_mm)`` of an ijk-to-world matrix (the lengths of its j and i columns)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return float(np.linalg.norm(matrix[:3, 1])), float(np.linalg.norm(matrix[:3, 0]))


def replies(result, message, settings: LiveSettings) -> list:
    """The label IMAGE and the measurements STRING answering one frame's :class:`~.stream.FrameResult`."""
    from pyigtl import ImageMessage, StringMessage

    mask = result.processed_mask
    label = ImageMessage(mask[np.newaxis].astype(np.uint8), ijk_to_world_matrix=message.ijk_to_world_matrix,
                         world_coordinate_system=message.world_coordinate_system, timestamp=message.timestamp,
                         device_name=settings.label_device)
    values = {"frame": result.index, "lesion": bool(mask.any())}
    if mask.any():
        size = measure_lesion(mask, spacing_of(message.ijk_to_world_matrix))
        values.update(area_mm2=round(size.area_mm2, 2), largest_diameter_mm=round(size.largest_diameter_mm, 2))
    if result.lesion_probability is not None:
        values["lesion_probability"] = round(result.lesion_probability, 4)
    text = StringMessage(json.dumps(values), timestamp=message.timestamp, device_name=settings.text_device)
    return [label, text]


class ReplyServer:
    """Replies sent to whoever is connected to a server on ``port`` (dropped while nobody is)."""

    def __init__(self, port: int):
        from pyigtl import OpenIGTLinkServer

        self.server = OpenIGTLinkServer(port=port, local_server=True)  # on 127.0.0.1: Slicer on this computer

    def send(self, message) -> None:
        if self.server.is_connected():
            self.server.send_message(message, wait=False)

    def close(self) -> None:
        self.server.stop()


def run_live(stepper, settings: LiveSettings, stop: threading.Event) -> dict:
    """Segment the newest frame of the stream until ``stop`` is set; return counts (segmented, dropped, skipped)."""
    reader = MessageReader(settings.host, settings.port, settings.retry_seconds, stop)
    replies_to = ReplyServer(settings.reply_port) if settings.reply_port else reader
    counts = {"segmented": 0, "dropped": 0, "skipped": 0, "connections": 0}
    window_start, window_frames = time.monotonic(), 0
    connection = 0
    try:
        while not stop.is_set():
            message, dropped = reader.newest_image(settings.input_device)
            counts["dropped"] += dropped
            if reader.connections != connection:  # a new stream: frame numbers and the temporal rule start again
                connection = reader.connections
                stepper.reset()
            if message is None:
                continue
            try:
                result = stepper.step(frame_of(message))
            except ValueError as error:  # a frame the pipeline refuses (a volume, too large, 1 pixel wide)
                logger.warning("skipped a frame from %r: %s", message.device_name, error)
                counts["skipped"] += 1
                continue
            for reply in replies(result, message, settings):
                replies_to.send(reply)
            counts["segmented"] += 1
            window_frames += 1
            if time.monotonic() - window_start >= REPORT_SECONDS:
                seconds = time.monotonic() - window_start
                logger.info("%.1f frames/s segmented; %d dropped so far", window_frames / seconds, counts["dropped"])
                window_start, window_frames = time.monotonic(), 0
    finally:
        reader.close()
        if replies_to is not reader:
            replies_to.close()
        counts["connections"] = reader.connections
    return counts


DEVICE_NAME_BYTES = 20  # the longest device name an OpenIGTLink header holds


def device_name(text: str) -> str:
    """A device name of at most 20 bytes; a longer one is a usage error."""
    if not text or len(text.encode("utf-8")) > DEVICE_NAME_BYTES:
        raise argparse.ArgumentTypeError(f"a device name must have 1 to {DEVICE_NAME_BYTES} bytes, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    from .cli import temporal_argument

    defaults = LiveSettings()
    parser = argparse.ArgumentParser(prog="breastus-live", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=defaults.host, help=f"OpenIGTLink server to read frames from "
                                                              f"(default {defaults.host})")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"its port (default {defaults.port})")
    parser.add_argument("--input-device", type=device_name, default=defaults.input_device,
                        help=f"device name of the IMAGE messages to segment (default {defaults.input_device})")
    parser.add_argument("--label-device", type=device_name, default=defaults.label_device,
                        help=f"device name of the lesion label IMAGE sent back (default {defaults.label_device})")
    parser.add_argument("--text-device", type=device_name, default=defaults.text_device,
                        help=f"device name of the measurements STRING sent back (default {defaults.text_device})")
    parser.add_argument("--reply-port", type=int, help="send the replies to clients of a server on this port "
                                                       "instead of back on the input connection")
    parser.add_argument("--retry", type=float, default=defaults.retry_seconds, metavar="SECONDS",
                        help=f"seconds between connection attempts (default {defaults.retry_seconds:g})")
    parser.add_argument("--weights", default=str(BUNDLED_WEIGHTS), help="model .safetensors (model card beside it)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="where the network runs")
    parser.add_argument("--temporal", type=temporal_argument, default=None, metavar="K/N",
                        help="show a lesion only where it overlaps one found on K of the N frames before (default off)")
    return parser


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
    from .inference import LesionSegmenter
    from .stream import FrameStepper
    from .weights import WeightsError

    try:
        segmenter = LesionSegmenter.from_weights(args.weights, device=args.device)
    except (WeightsError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = LiveSettings(args.host, args.port, args.input_device, args.label_device, args.text_device,
                            args.reply_port, args.retry)
    stop = threading.Event()
    logger.info("segmenting %r from %s:%d; replies %s as %r and %r", settings.input_device, settings.host,
                settings.port, f"on port {settings.reply_port}" if settings.reply_port else "on the same connection",
                settings.label_device, settings.text_device)
    try:
        counts = run_live(FrameStepper(segmenter, args.temporal), settings, stop)
    except KeyboardInterrupt:
        stop.set()
        return 0
    logger.info("stopped: %(segmented)d frames segmented, %(dropped)d dropped, %(skipped)d skipped", counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
