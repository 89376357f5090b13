"""breastus-live against a real OpenIGTLink server (pyigtl) on 127.0.0.1 streaming a simulated sweep."""

import json
import logging
import socket
import threading
import time

import numpy as np
import pytest

pyigtl = pytest.importorskip("pyigtl")

from BreastUSSegmentLib.live import LiveSettings, MessageReader, run_live  # noqa: E402
from BreastUSSegmentLib.stream import FrameStepper  # noqa: E402

ROWS, COLUMNS = 48, 64
MATRIX = np.array([[0.2, 0.0, 0.0, -12.5], [0.0, -0.3, 0.0, 40.0], [0.0, 0.0, 1.0, 7.0], [0.0, 0.0, 0.0, 1.0]])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sweep_frame(index: int) -> np.ndarray:
    """A bright square moving right by 3 pixels a frame over a dark background."""
    frame = np.full((ROWS, COLUMNS), 25, np.uint8)
    frame[12:32, 3 * index:3 * index + 20] = 210
    return frame


def image_message(index: int, device="Image_Reference"):
    return pyigtl.ImageMessage(sweep_frame(index)[np.newaxis], ijk_to_world_matrix=MATRIX, timestamp=1000.0 + index,
                               device_name=device)


class BrokenImage(pyigtl.ImageMessage):
    """An IMAGE whose body (with a valid checksum) announces more pixels than it carries."""

    def _pack_content(self):
        return super()._pack_content()[:-100]


class Live:
    """breastus-live's loop in a thread, stopped at the end."""

    def __init__(self, segmenter, port, **settings):
        self.stop = threading.Event()
        self.settings = LiveSettings(port=port, retry_seconds=0.1, **settings)
        self.counts = None
        self.thread = threading.Thread(target=self._run, args=(FrameStepper(segmenter),), daemon=True)
        self.thread.start()

    def _run(self, stepper):
        self.counts = run_live(stepper, self.settings, self.stop)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@pytest.fixture
def server():
    servers = []

    def start(port):
        servers.append(pyigtl.OpenIGTLinkServer(port=port, local_server=True))
        return servers[-1]

    yield start
    for item in servers:
        item.stop()


def reply_to(server, device, timestamp, timeout=20.0):
    """The reply of ``device`` to the frame sent with ``timestamp`` (pyigtl keeps the newest per device)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = server.wait_for_message(device, timeout=0.05)
        if message is not None and abs(message.timestamp - timestamp) < 1e-3:
            return message
    raise AssertionError(f"no {device} reply to the frame of timestamp {timestamp}")


def wait_connected(server, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not server.is_connected():
        assert time.monotonic() < deadline, "breastus-live did not connect"
        time.sleep(0.02)


def test_every_frame_of_a_sweep_gets_a_label_with_its_geometry_and_measurements(brightness_segmenter, server):
    port = free_port()
    peer = server(port)
    live = Live(brightness_segmenter, port)
    try:
        wait_connected(peer)
        for index in range(12):
            peer.send_message(image_message(index), wait=True)
            label = reply_to(peer, "BreastUS_Lesion", 1000.0 + index)
            text = reply_to(peer, "BreastUS_Measurement", 1000.0 + index)
            assert label.image.shape == (1, ROWS, COLUMNS)
            assert np.allclose(label.ijk_to_world_matrix, MATRIX, atol=1e-5)
            assert np.array_equal(label.image[0] > 0, sweep_frame(index) > 128)
            values = json.loads(text.string)
            assert values["lesion"] and values["frame"] == index
            assert values["area_mm2"] == pytest.approx(20 * 20 * 0.2 * 0.3, rel=0.01)
    finally:
        live.close()
    assert live.counts["segmented"] == 12 and live.counts["skipped"] == 0


def test_device_names_are_configurable_and_other_devices_ignored(brightness_segmenter, server):
    port = free_port()
    peer = server(port)
    live = Live(brightness_segmenter, port, input_device="Probe", label_device="Mask", text_device="Numbers")
    try:
        wait_connected(peer)
        peer.send_message(image_message(0, device="Other"), wait=True)
        peer.send_message(image_message(1, device="Probe"), wait=True)
        assert reply_to(peer, "Mask", 1001.0).image.shape == (1, ROWS, COLUMNS)
        assert json.loads(reply_to(peer, "Numbers", 1001.0).string)["frame"] == 0
    finally:
        live.close()
    assert live.counts["segmented"] == 1


def test_a_dropped_connection_is_retried_and_reported(brightness_segmenter, server, caplog):
    caplog.set_level(logging.INFO, logger="breastus-live")
    port = free_port()
    live = Live(brightness_segmenter, port)  # no server yet: it retries
    try:
        time.sleep(0.5)
        peer = server(port)
        wait_connected(peer)
        peer.send_message(image_message(0), wait=True)
        reply_to(peer, "BreastUS_Lesion", 1000.0)
        peer.stop()  # the server goes away...
        time.sleep(0.5)
        peer = server(port)  # ...and comes back
        wait_connected(peer)
        peer.send_message(image_message(1), wait=True)
        reply = reply_to(peer, "BreastUS_Measurement", 1001.0)
        assert json.loads(reply.string)["frame"] == 0  # a new stream starts at frame 0
    finally:
        live.close()
    log = caplog.text
    assert f"cannot connect to 127.0.0.1:{port}" in log and "retrying in 0.1 s" in log
    assert f"connection to 127.0.0.1:{port} lost" in log
    assert live.counts["connections"] >= 2


def test_a_malformed_message_is_skipped_with_a_log_line(brightness_segmenter, server, caplog):
    caplog.set_level(logging.INFO, logger="breastus-live")
    port = free_port()
    peer = server(port)
    live = Live(brightness_segmenter, port)
    try:
        wait_connected(peer)
        broken = BrokenImage(sweep_frame(0)[np.newaxis], ijk_to_world_matrix=MATRIX, timestamp=999.0,
                             device_name="Image_Reference")
        peer.send_message(broken, wait=True)
        volume = pyigtl.ImageMessage(np.zeros((2, ROWS, COLUMNS), np.uint8), timestamp=998.0,
                                     device_name="Image_Reference")
        peer.send_message(volume, wait=True)
        time.sleep(0.5)  # read on its own, not dropped as older than the next frame
        peer.send_message(image_message(3), wait=True)
        reply_to(peer, "BreastUS_Lesion", 1003.0)
    finally:
        live.close()
    assert "skipped a malformed IMAGE message from 'Image_Reference': ValueError" in caplog.text
    assert "skipped a frame from 'Image_Reference': expected a 2-D frame" in caplog.text
    assert live.counts["connections"] == 1 and live.counts["segmented"] == 1


def test_only_the_newest_of_the_frames_waiting_is_segmented(brightness_segmenter):
    """Frames that arrived while one was being segmented are dropped, not queued."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        reader = MessageReader("127.0.0.1", listener.getsockname()[1], 0.1, threading.Event())
        assert reader.connect()
        peer, _ = listener.accept()
        with peer:
            peer.sendall(b"".join(image_message(index).pack() for index in range(5)))
            time.sleep(0.3)
            newest, dropped = reader.newest_image("Image_Reference")
        reader.close()
    assert newest.timestamp == pytest.approx(1004.0) and dropped == 4


def test_a_device_name_too_long_for_the_protocol_is_a_usage_error(capsys):
    from BreastUSSegmentLib.live import main

    with pytest.raises(SystemExit):
        main(["--label-device", "A_Device_Name_Of_21_B"])
    assert "1 to 20 bytes" in capsys.readouterr().err


def test_the_live_benchmark_runs_and_reports_its_numbers(tmp_path):
    """The benchmark script end to end (the real breastus-live process) with a tiny model, a short stream."""
    import subprocess
    import sys
    from pathlib import Path

    from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
    from BreastUSSegmentLib.weights import save_model
    from conftest import brightness_model

    weights = tmp_path / "bright.safetensors"
    save_model(brightness_model(), weights, input_size=(64, 64), postprocessing=UNTUNED_POSTPROCESSING)
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "live_benchmark.py"
    done = subprocess.run([sys.executable, str(script), "--fps", "10", "--seconds", "2", "--warmup", "0.5",
                           "--weights", str(weights)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "frames sent 20," in done.stdout
    answered = int(done.stdout.split("answered ")[1].split(",")[0])
    assert 0 < answered <= 20 and "latency send -> label: median" in done.stdout
