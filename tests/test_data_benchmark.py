"""python -m jaxvision.data.benchmark: the pipeline-only img/s record and its JPEG writer."""

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from jaxvision import config as config_lib
from jaxvision.data import benchmark, folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_measure_reports_pipeline_images_per_second():
    c = config_lib.base()
    c.dataset.name = "digits"
    c.batch_size = 16
    c.dataset.threads = 1
    record = benchmark.measure(c, warmup=1, batches=3)
    assert record["batch_size"] == 16 and record["batches"] == 3
    assert record["image_shape"] == [8, 8, 1] and record["threads"] == 1
    # Both fields are rounded (rate to 0.1 img/s, time to 0.1 ms): allow exactly that.
    rate, seconds = record["pipeline_img_per_s"], record["seconds"]
    assert rate > 0
    assert abs(rate * seconds - 48) <= 0.05 * seconds + 0.00005 * rate + 1e-5


def test_written_jpegs_form_a_valid_image_folder(tmp_path):
    benchmark.write_jpegs(str(tmp_path / "jpegs"), 6, num_classes=2, size=(30, 40))
    scanned = folder.scan(str(tmp_path / "jpegs"), cache_dir=str(tmp_path / "cache"))
    assert scanned.class_names == ["class0", "class1"]
    assert scanned.report.num_images == 6 and scanned.report.num_skipped == 0


def test_command_line_prints_one_json_line():
    result = subprocess.run(
        [
            sys.executable, "-m", "jaxvision.data.benchmark",
            "--config=configs/quickstart.py", "--config.dataset.name=digits",
            "--config.batch_size=16", "--warmup=1", "--batches=2",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["dataset"] == "digits" and record["pipeline_img_per_s"] > 0
