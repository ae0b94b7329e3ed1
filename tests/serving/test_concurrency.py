"""Several sessions at once: one shared pipeline, the same pixels as alone, a fair queue, one demo build."""

import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from affine import Affine

from seg2sat.config import compose
from seg2sat.generation.models import load_model
from seg2sat.generation.sampling import Sampling
from seg2sat.geo.geotiff import write_geotiff
from seg2sat.geo.raster import FLAIR_CRS
from seg2sat.serving import app_support as sup
from seg2sat.serving.device_queue import DeviceQueue


@pytest.fixture(scope="module")
def shared():
    return load_model("tiny-random")


def _job(i: int) -> dict:
    """A different map, seed and kind of call per job."""
    codes = sup.template_codes(("fields", "village", "river")[i % 3], 96)
    codes[(7 * i) % 80:(7 * i) % 80 + 12, :] = 3
    return {"kind": "edit" if i % 2 else "generate", "codes": codes, "seed": 10 + i}


def _run(model, job):
    settings = Sampling(seed=job["seed"], steps=6, guidance_scale=3.0, tile=model.tile, overlap=16)
    if job["kind"] == "generate":
        return sup.generate(model, job["codes"], "Aerial view of Gironde. river", settings)["image"]
    image = np.random.default_rng(job["seed"]).integers(0, 255, (*job["codes"].shape, 3), dtype=np.uint8)
    painted = np.zeros(job["codes"].shape, bool)
    painted[20:60, 30:70] = True
    return sup.edit(model, image, job["codes"], painted, "Aerial view of Gironde. road", settings, margin=4)


def test_threads_sharing_a_pipeline_get_the_images_they_would_get_alone(shared):
    jobs = [_job(i) for i in range(6)]
    alone = [_run(shared, job) for job in jobs]
    barrier = threading.Barrier(len(jobs))

    def together(job):
        barrier.wait()  # all start at once, so their denoising steps interleave
        return _run(shared, job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(together, jobs))
    for job, a, b in zip(jobs, alone, results, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=f"{job['kind']} seed {job['seed']}")
    assert len({r.tobytes() for r in results}) == len(jobs)  # each got its own image


def test_queue_runs_one_at_a_time_in_arrival_order_and_reports_positions():
    queue = DeviceQueue(1)
    running, peak, order, seen = [0], [0], [], {}
    lock = threading.Lock()
    gate = threading.Event()

    def user(i):
        def on_wait(status):
            seen.setdefault(i, []).append(status.position)

        with queue.slot(on_wait=on_wait, poll_s=0.02):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                order.append(i)
            if i == 0:
                gate.wait(5)  # hold the device until everyone is in line
            time.sleep(0.05)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=user, args=(0,))]
    threads[0].start()
    time.sleep(0.1)
    for i in (1, 2, 3):
        threads.append(threading.Thread(target=user, args=(i,)))
        threads[-1].start()
        time.sleep(0.1)  # arrival order 1, 2, 3
    assert queue.status().position == 4  # a newcomer would be fourth in line
    gate.set()
    for t in threads:
        t.join(10)
    assert peak[0] == 1 and order == [0, 1, 2, 3]
    assert seen[3][0] == 3 and seen[3][-1] == 1  # third in line, then next
    assert 0 not in seen  # the first caller never waited
    assert queue.status().eta_s is not None and queue.status().position == 1


def test_a_waiter_that_gives_up_leaves_the_line():
    queue = DeviceQueue(1)
    holder_in, release = threading.Event(), threading.Event()

    def holder():
        with queue.slot():
            holder_in.set()
            release.wait(5)

    class Stop(Exception):
        pass

    def impatient(status):
        raise Stop  # what Streamlit does to a script run whose user pressed Cancel

    t = threading.Thread(target=holder)
    t.start()
    holder_in.wait(5)
    with pytest.raises(Stop):
        with queue.slot(on_wait=impatient):
            pass
    assert queue.status().position == 1  # nobody is waiting any more
    release.set()
    t.join(5)
    with queue.slot(on_wait=impatient) as waited:  # a free device: no wait, no callback
        assert waited < 0.5


def test_two_slots_run_two_at_once():
    queue = DeviceQueue(2)
    inside, peak, lock = [0], [0], threading.Lock()

    def user():
        with queue.slot(poll_s=0.01):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.1)
            with lock:
                inside[0] -= 1

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: user(), range(4)))
    assert peak[0] == 2
    with pytest.raises(ValueError, match="slots must be >= 1"):
        DeviceQueue(0)


def test_demo_build_runs_once_for_sessions_pressing_at_once(tmp_path, monkeypatch):
    from seg2sat.stages import demo

    calls = []

    def slow_demo(cfg):
        calls.append(threading.get_ident())
        time.sleep(0.3)
        model = tmp_path / "data" / "models" / "demo"
        model.mkdir(parents=True)
        return type("R", (), {"model_dir": model})()

    monkeypatch.setattr(demo, "run", slow_demo)
    cfg = compose("app", [f"paths.root_dir={tmp_path}", f"model_path={tmp_path / 'data' / 'models' / 'demo'}"])
    assert sup.demo_model_missing(cfg)
    with ThreadPoolExecutor(3) as pool:
        built = list(pool.map(lambda _: sup.build_demo_model(cfg), range(3)))
    assert len(calls) == 1 and len({str(p) for p in built}) == 1 and not sup.demo_model_missing(cfg)


def test_uploads_and_batch_runs_leave_no_temp_folder(shared, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    codes = np.full((1, 64, 80), 10, np.uint8)
    tif = write_geotiff(tmp_path / "m.tif", codes, FLAIR_CRS, Affine(0.2, 0, 100, 0, -0.2, 200))
    upload = sup.read_upload("m.tif", tif.read_bytes(), max_bytes=2**20, max_pixels=2**20)
    assert upload.codes.shape == (64, 80) and not list(scratch.iterdir())
    cfg = compose("app", [f"paths.root_dir={tmp_path}", "model_path=tiny-random", "sampling.steps=2"])
    data, sidecar = sup.run_batch(cfg, upload, shared)
    assert data[:2] in (b"II", b"MM") and sidecar["size"] == [80, 64]
    assert not list(scratch.iterdir())  # the input copy and the output folder are gone
