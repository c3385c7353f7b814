"""People as the annotator: rounds published as files, labels staged from CSV files, imported by the next run."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import config_with
from osal_ray import label as label_cli
from osal_ray.errors import InputError
from osal_ray.examples.image_pool import write_example
from osal_ray.experiment import prepare_experiment, run_experiment
from osal_ray.experiment import trajectory as trajectory_module
from osal_ray.experiment.state import RunState

pytestmark = pytest.mark.ray
QUIET = dict(log=lambda _: None)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    directory = tmp_path_factory.mktemp("example") / "pool"
    write_example(directory, pool_size=150, labeled_per_class=4, test_per_class=10, source="digits")
    return directory


def _config(root: Path, out: Path, **overrides):
    raw = {
        "name": "pool-test", "seeds": [0], "strategies": ["random", "osal"], "output_dir": str(out),
        "data": {"dataset": "image_pool", "root": str(root), "image_size": 8},
        "al": {"rounds": 2, "budget": 10}, "train": {"epochs": 5, "num_workers": 0},
    }
    return config_with(raw, overrides)


def _run(config):
    prepared = prepare_experiment(config, **QUIET)
    return prepared, run_experiment(prepared, **QUIET)


def _truth(root: Path) -> dict[str, str]:
    with open(root / "truth.csv", newline="") as handle:
        return {row["path"]: row["label"] for row in csv.DictReader(handle)}


def _write_labels(path: Path, rows: list[tuple[str, str]], header: str = "key,label") -> Path:
    path.write_text(header + "\n" + "".join(f"{a},{b}\n" for a, b in rows), encoding="utf-8")
    return path


def _open_queries(out: Path, round_index: int) -> list[dict]:
    with open(out / "annotation" / f"round_{round_index:03d}" / "queries.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _label_round(out: Path, root: Path, round_index: int, tmp: Path) -> None:
    truth = _truth(root)
    keys = {row["key"]: truth[row["path"]] for row in _open_queries(out, round_index)}
    assert label_cli.main([str(out), str(_write_labels(tmp / f"r{round_index}.csv", sorted(keys.items())))]) == 0


def test_a_files_run_waits_for_labels_and_imports_them(ray_session, example, tmp_path, capsys):
    out = tmp_path / "run"
    _run(_config(example, out))
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "waiting_for_labels" and status["round"] == 1
    folder = out / "annotation" / "round_001"
    queries = _open_queries(out, 1)
    assert [c for c in queries[0]] == ["rank", "key", "path", "score", "strategy", "seed"]
    assert {q["strategy"] for q in queries} == {"random", "osal"}
    keys = sorted({q["key"] for q in queries})
    assert status["missing"] == len(keys) and status["queried"] == len(keys)
    template = (folder / "labels_template.csv").read_text().splitlines()
    assert template[0] == "key,path,prediction,label" and sorted(line.split(",")[0] for line in template[1:]) == keys
    request = json.loads((folder / "request.json").read_text())
    guesses = set(request["class_names"]) | {request["unknown_label"]}
    assert all(line.endswith(",") and line.split(",")[2] in guesses for line in template[1:])  # the model's guess
    assert all(q["prediction"] in guesses and 0 <= q["prediction_score"] <= 1 for q in request["queries"])
    assert "model's guess" in (folder / "contact_sheet.html").read_text()
    sheet = (folder / "contact_sheet.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', sheet)) == len(keys)

    truth = _truth(example)
    by_key = {q["key"]: q for q in queries}
    answers = [(k, truth[by_key[k]["path"]]) for k in keys]
    # Half now (by path), the rest later (by key): partial files are merged.
    first = _write_labels(tmp_path / "first.csv", [(by_key[k]["path"], v) for k, v in answers[:5]], header="path,label")
    assert label_cli.main([str(out), str(first)]) == 0
    assert json.loads((out / "status.json").read_text())["missing"] == len(keys) - 5
    prepared = prepare_experiment(_config(example, out), **QUIET)
    assert prepared.waiting is not None and "still need a label" in prepared.waiting
    run_experiment(prepared, **QUIET)  # nothing to do: no state changes
    assert RunState.load(out / "runs" / "osal" / "seed_0" / "state.json").pending.round == 1

    rest = _write_labels(tmp_path / "rest.csv", answers[5:])
    assert label_cli.main([str(out), str(rest)]) == 0
    assert "complete" in capsys.readouterr().out
    _run(_config(example, out))
    status = json.loads((out / "status.json").read_text())
    assert status["round"] == 2 and (out / "annotation" / "round_001" / "closed.json").is_file()

    audit = pd.read_parquet(out / "labels.parquet")
    assert sorted(audit["key"]) == keys and set(audit["round"]) == {1}
    assert set(audit["source_file"]) == {str(first.resolve()), str(rest.resolve())}
    guessed = {q["key"]: q["prediction"] for q in request["queries"]}
    assert (audit["agreed_with_prediction"] == (audit["label"] == audit["key"].map(guessed))).all()
    queries_table = pd.read_parquet(out / "queries.parquet")
    assert set(queries_table["key"]) == set(keys) and queries_table["path"].notna().all()
    rounds = pd.read_parquet(out / "rounds.parquet")
    round_1 = rounds[rounds["round"] == 1]
    assert round_1["recall"].isna().all()  # no ground truth
    for strategy, row in round_1.set_index("strategy").iterrows():
        mine = queries_table[queries_table["strategy"] == strategy]
        assert row["precision"] == pytest.approx(mine["known"].mean())
    assert rounds["accuracy"].between(0, 1).all()  # test/ gives accuracy

    _label_round(out, example, 2, tmp_path)
    _run(_config(example, out))
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    assert label_cli.main([str(out), str(rest)]) == 2  # nothing is open any more


@pytest.mark.parametrize("content, problem", [
    ("key,label\n{key},not_a_class\n", "is not one of"),
    ("key,label\nffff0000,unknown\n", "was not queried in the open round"),
    ("path,label\nunlabeled/nowhere.png,unknown\n", "was not queried in the open round"),
    ("key,label\n{key},unknown\n{key},skip\n", "labeled 'skip' here and 'unknown' in row 1"),
    ("key,class\n{key},unknown\n", "must name a label column"),
    ("", "empty"),
    (b"key,label\n\xff\xfe,unknown\n", "not UTF-8"),
    ("key,label\n{key},unknown\n{other},nonsense\n", "row 2"),
])
def test_bad_label_files_are_refused_and_stage_nothing(ray_session, example, tmp_path, content, problem, capsys):
    out = tmp_path / "run"
    _run(_config(example, out, strategies=["random"]))
    keys = [q["key"] for q in _open_queries(out, 1)]
    path = tmp_path / "bad.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content.format(key=keys[0], other=keys[1]), encoding="utf-8")
    before = (out / "status.json").read_text()
    assert label_cli.main([str(out), str(path)]) == 2
    assert problem in capsys.readouterr().err
    assert not (out / "annotation" / "round_001" / "staged").exists() or not any((out / "annotation" / "round_001" / "staged").iterdir())
    assert (out / "status.json").read_text() == before


def test_skipped_images_leave_the_pool_and_cost_no_budget(ray_session, example, tmp_path):
    out = tmp_path / "run"
    _run(_config(example, out, strategies=["random"], **{"al.rounds": 1}))
    truth = _truth(example)
    queries = _open_queries(out, 1)
    rows = [(q["key"], "skip" if i < 3 else truth[q["path"]]) for i, q in enumerate(queries)]
    assert label_cli.main([str(out), str(_write_labels(tmp_path / "l.csv", rows))]) == 0
    _run(_config(example, out, strategies=["random"], **{"al.rounds": 1}))
    state = RunState.load(out / "runs" / "random" / "seed_0" / "state.json")
    assert len(state.skipped_ids) == 3 and state.rounds[-1].budget_spent == 7 and state.rounds[-1].n_queried == 7
    assert not set(state.skipped_ids) & set(state.labeled_ids + state.invalid_ids)
    assert pd.read_parquet(out / "queries.parquet")["skipped"].sum() == 3


def test_files_labels_from_the_truth_make_the_queries_of_the_simulated_run(ray_session, example, tmp_path):
    """One loop for both annotators: a script that labels from the truth reproduces the simulated run."""
    simulated = tmp_path / "simulated"
    _run(_config(example, simulated, **{"oracle.kind": "simulated", "oracle.truth_file": str(example / "truth.csv")}))
    files = tmp_path / "files"
    for round_index in (1, 2):
        _run(_config(example, files))
        _label_round(files, example, round_index, tmp_path)
    _run(_config(example, files))
    columns = ["strategy", "seed", "round", "id", "key", "score", "known", "skipped"]
    a = pd.read_parquet(simulated / "queries.parquet")[columns].sort_values(["strategy", "round", "id"]).reset_index(drop=True)
    b = pd.read_parquet(files / "queries.parquet")[columns].sort_values(["strategy", "round", "id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    ra, rb = (pd.read_parquet(d / "rounds.parquet") for d in (simulated, files))
    for column in ("n_labeled_known", "n_invalid", "budget_spent", "accuracy", "precision"):
        np.testing.assert_allclose(ra[column], rb[column])


def test_a_kill_while_importing_loses_no_label(ray_session, example, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _run(_config(example, out, strategies=["random"]))
    _label_round(out, example, 1, tmp_path)
    real = trajectory_module._train_all

    def killed(ctx, state, plans, round_index):
        raise KeyboardInterrupt("killed while training on the imported labels")

    monkeypatch.setattr(trajectory_module, "_train_all", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(_config(example, out, strategies=["random"]))
    state = RunState.load(out / "runs" / "random" / "seed_0" / "state.json")
    assert state.pending is not None and state.completed_round == 0  # the import was not half-written
    monkeypatch.setattr(trajectory_module, "_train_all", real)
    _run(_config(example, out, strategies=["random"]))
    state = RunState.load(out / "runs" / "random" / "seed_0" / "state.json")
    assert state.completed_round == 1 and len(state.labeled_ids) + len(state.invalid_ids) == 16 + 10


def test_images_added_mid_run_join_the_pool(ray_session, example, tmp_path):
    import shutil

    root = tmp_path / "pool"
    shutil.copytree(example, root)
    out = tmp_path / "run"
    first, _ = _run(_config(root, out, strategies=["random"]))
    before = first.seeds[0].manifest.num_pool
    from PIL import Image

    (root / "unlabeled" / "later").mkdir()
    for i in range(5):
        Image.fromarray(np.full((8, 8), 20 * i + 3, np.uint8)).save(root / "unlabeled" / "later" / f"{i}.png")
    _label_round(out, root, 1, tmp_path)
    second, _ = _run(_config(root, out, strategies=["random"]))
    assert second.seeds[0].manifest.num_pool == before + 5


def test_deleting_a_labeled_image_neither_blocks_resuming_nor_loses_its_label(ray_session, example, tmp_path):
    import shutil

    root = tmp_path / "pool"
    shutil.copytree(example, root)
    shutil.rmtree(root / "unlabeled" / "broken")
    (root / "unlabeled" / "batch_01" / "copy_of_img_00000.png").unlink(missing_ok=True)
    files = sorted(p for p in (root / "unlabeled").rglob("*") if p.is_file())
    if len(files) % 2:
        files.pop().unlink()
    config = _config(root, tmp_path / "run", strategies=["random"], **{"al.budget": len(files) // 2})  # every file is needed
    out = tmp_path / "run"
    _run(config)
    _label_round(out, root, 1, tmp_path)
    gone = _open_queries(out, 1)[0]
    (root / gone["path"]).unlink()
    _run(config)  # was: "unlabeled holds only N-1 files"
    state = RunState.load(out / "runs" / "random" / "seed_0" / "state.json")
    assert state.completed_round == 1
    from osal_ray.data.image_files import key_to_id

    gone_id = key_to_id(gone["key"])
    assert gone_id in [q.id for q in state.queries if q.round == 1]
    assert gone_id in state.labeled_ids + state.invalid_ids + state.skipped_ids  # its label is kept


def test_a_second_run_on_a_directory_in_use_is_refused(tmp_path):
    """Two processes: the second refuses at once, exit 2, naming the holder; free again afterwards."""
    import subprocess
    import sys

    from osal_ray.lock import OutputLock

    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; from osal_ray.lock import OutputLock; "
                               f"lock = OutputLock.acquire(Path({str(out)!r})); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run([sys.executable, "-m", "osal_ray.run", "--set", "strategies=[random]", "--output-dir", str(out)],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"in use by pid {holder.pid}" in second.stderr and "since" in second.stderr
        assert not (out / "config.yaml").exists()  # refused before writing anything
    finally:
        holder.kill()
        holder.wait()
    OutputLock.acquire(out).release()  # the dead holder's lock is taken over


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    import socket

    from osal_ray.lock import LOCK_FILE, OutputLock

    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "started": "then"}))
    with OutputLock.acquire(tmp_path) as lock:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] != 2**22 + 12345
    assert not (tmp_path / LOCK_FILE).exists() and not lock.held


def _orphan_lock(directory: Path, pid: int) -> None:
    """A lock as a Ray worker writes it, held by live ``pid``, whose raylet is gone."""
    import socket

    from osal_ray.lock import LOCK_FILE

    directory.mkdir(parents=True, exist_ok=True)
    (directory / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "then",
                                                   "command": "osal_ray.serve for x", "raylet_pid": 2**22 + 54321}))


def test_a_restart_waits_for_the_worker_a_killed_ray_node_left_behind(tmp_path):
    """kill -9 of a service leaves its replica (the lock's holder) alive for a moment: the restart
    waits for it instead of refusing, and refuses with what to do if it never exits."""
    import subprocess
    import sys
    import threading

    from osal_ray.lock import LOCK_FILE, OutputLock

    straggler = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _orphan_lock(tmp_path / "a", straggler.pid)
        with pytest.raises(InputError, match=f"raylet pid {2**22 + 54321}.*kill {straggler.pid}"):
            OutputLock.acquire(tmp_path / "a", orphan_grace_s=0.5)
        assert json.loads((tmp_path / "a" / LOCK_FILE).read_text())["pid"] == straggler.pid  # refused: untouched
        threading.Timer(1.0, straggler.kill).start()
        with OutputLock.acquire(tmp_path / "a", orphan_grace_s=30):
            assert json.loads((tmp_path / "a" / LOCK_FILE).read_text())["pid"] != straggler.pid
    finally:
        straggler.kill()
        straggler.wait()


def test_a_live_holder_with_its_ray_node_alive_is_not_waited_for(tmp_path, ray_session):
    """A Ray worker records its raylet; while that raylet lives, the lock is refused at once."""
    import os
    import time

    import ray

    from osal_ray.lock import OutputLock

    @ray.remote(num_cpus=0)
    class Holder:
        def hold(self, directory: str) -> dict:
            self.lock = OutputLock.acquire(Path(directory), purpose="held in a worker")
            return {**json.loads(self.lock.path.read_text()), "worker_pid": os.getpid()}

    actor = Holder.remote()
    try:
        holder = ray.get(actor.hold.remote(str(tmp_path / "b")))
        assert holder["raylet_pid"] != holder["pid"] and holder["pid"] == holder["worker_pid"]
        assert "raylet" in Path(f"/proc/{holder['raylet_pid']}/cmdline").read_text()
        started = time.monotonic()
        with pytest.raises(InputError, match=f"in use by pid {holder['pid']}.*wait for it to finish"):
            OutputLock.acquire(tmp_path / "b", orphan_grace_s=30)
        assert time.monotonic() - started < 5
    finally:
        ray.kill(actor)


def test_simulated_image_pool_needs_a_truth_file(example, tmp_path):
    with pytest.raises(InputError, match="oracle.truth_file"):
        prepare_experiment(_config(example, tmp_path / "o", **{"oracle.kind": "simulated"}), **QUIET)


KEY_A, KEY_B = "a" * 64, "b" * 64


def _open_round(out: Path) -> Path:
    """An output directory waiting for labels of round 1 (images A and B), made by hand: no Ray."""
    folder = out / "annotation" / "round_001"
    folder.mkdir(parents=True)
    (out / "config.yaml").write_text("name: hand-made\n")
    request = {"queries": [{"key": KEY_A, "path": "unlabeled/a.png"}, {"key": KEY_B, "path": "unlabeled/b.png"}],
               "class_names": ["cat", "dog"], "unknown_label": "unknown", "allowed_labels": ["cat", "dog", "unknown", "skip"]}
    (folder / "request.json").write_text(json.dumps(request))
    return folder


def _label_error(capsys, out: Path, label_file: Path) -> str:
    assert label_cli.main([str(out), str(label_file)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("content, problem", [
    ('{"source": "x", "staged_at": "t", "labels": [', "not valid JSON"),
    ("\x00\x01garbage", "not valid JSON"),
    ('[{"key": "k", "label": "cat"}]', "holds a JSON list"),
    ('{"source": "x", "staged_at": "t", "labels": [{"key": "k"}]}', "labels[0] is not"),
    ('{"source": "x", "staged_at": "t"}', "'labels' is missing"),
])
def test_a_corrupt_staged_file_is_named_and_kept(tmp_path, capsys, content, problem):
    out = tmp_path / "run"
    folder = _open_round(out)
    (folder / "staged").mkdir()
    corrupt = folder / "staged" / "00001-1-labels.json"
    corrupt.write_text(content)
    line = _label_error(capsys, out, _write_labels(tmp_path / "l.csv", [(KEY_A, "cat")]))
    assert str(corrupt) in line and problem in line and "restore" in line
    assert corrupt.read_text() == content and len(list((folder / "staged").iterdir())) == 1  # never rewritten


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"queries": 3}'])
def test_a_corrupt_request_file_is_named(tmp_path, capsys, content):
    out = tmp_path / "run"
    folder = _open_round(out)
    (folder / "request.json").write_text(content)
    line = _label_error(capsys, out, _write_labels(tmp_path / "l.csv", [(KEY_A, "cat")]))
    assert str(folder / "request.json") in line


def test_a_label_row_whose_key_and_path_disagree_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    _open_round(out)
    rows = tmp_path / "l.csv"
    rows.write_text(f"key,path,label\n{KEY_A},unlabeled/b.png,cat\n")
    line = _label_error(capsys, out, rows)
    assert "row 1" in line and "unlabeled/b.png" in line and not (out / "annotation" / "round_001" / "staged").exists()
    rows.write_text(f"key,path,label\n{KEY_A},unlabeled/a.png,cat\n")  # agreeing key and path are fine
    assert label_cli.main([str(out), str(rows)]) == 0


def test_a_directory_as_label_file_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    _open_round(out)
    (tmp_path / "some_dir").mkdir()
    assert "not a file" in _label_error(capsys, out, tmp_path / "some_dir")


def test_a_full_disk_while_staging_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    import errno
    import os

    out = tmp_path / "run"
    folder = _open_round(out)
    real_fsync = os.fsync

    def full(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".0"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    line = _label_error(capsys, out, _write_labels(tmp_path / "l.csv", [(KEY_A, "cat")]))
    assert "No space left on device" in line and "nothing was staged" in line
    assert list((folder / "staged").iterdir()) == []  # no 0-byte .tmp left behind
    assert not (out / ".osal_ray.lock").exists()  # the lock was given back


@pytest.mark.parametrize("content", ["abc", "[1, 2]", '{"pid": "x"}', ""])
def test_an_unreadable_lock_is_refused_while_fresh_and_taken_over_once_stale(tmp_path, content):
    import os

    from osal_ray.lock import LOCK_FILE, OutputLock

    lock = tmp_path / LOCK_FILE
    lock.write_text(content)
    with pytest.raises(InputError, match="unreadable"):
        OutputLock.acquire(tmp_path)
    os.utime(lock, (1, 1))  # left long ago by a process that died while writing it
    OutputLock.acquire(tmp_path).release()
    assert not lock.exists()


def test_a_stale_lock_in_a_read_only_directory_is_a_clear_error(tmp_path, monkeypatch):
    import errno
    import os

    from osal_ray.lock import LOCK_FILE, OutputLock

    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 2**22 + 7, "host": __import__("socket").gethostname()}))

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)  # tests run as root, where chmod does not stop writes
    with pytest.raises(InputError, match="cannot be taken over.*Read-only file system"):
        OutputLock.acquire(tmp_path)
