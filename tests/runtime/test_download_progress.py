"""Progress reporting (JSON lines in a pod, a bar on a terminal) and the termination message."""
from __future__ import annotations

import io
import json
import threading

from modelyard.commands.download import fit, termination_log_path
from modelyard.runtime.errors import DownloadError
from modelyard.runtime.progress import Progress


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_json_lines_at_most_once_per_second_then_done(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("modelyard.runtime.progress.time.monotonic", clock)
    out = io.StringIO()
    p = Progress(1000, step="download", stream=out)
    for _ in range(10):  # ten advances within 0.9 s: one line
        clock.now += 0.09
        p.advance(10)
    clock.now += 0.5
    p.advance(100)  # 1.4 s after the first line: a second one
    p.close()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 3 and all(x["event"] == "progress" and x["step"] == "download" for x in lines)
    assert lines[1]["bytesDone"] == 200 and lines[1]["bytesTotal"] == 1000
    assert lines[1]["bytesPerSecond"] > 0 and lines[1]["etaSeconds"] > 0
    assert lines[-1]["done"] is True and lines[-1]["bytesDone"] == 200
    assert "done" not in lines[0]


def test_resumed_bytes_count_as_done_not_as_speed(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("modelyard.runtime.progress.time.monotonic", clock)
    out = io.StringIO()
    p = Progress(1000, stream=out, already=900)
    clock.now += 2
    p.advance(100)
    p.close()
    last = json.loads(out.getvalue().splitlines()[-1])
    assert last["bytesDone"] == 1000 and last["bytesPerSecond"] == 50


def test_advance_is_thread_safe():
    p = Progress(None, stream=io.StringIO())
    threads = [threading.Thread(target=lambda: [p.advance(1) for _ in range(10_000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert p.done == 40_000


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_terminal_bar():
    out = Tty()
    with Progress(4 << 20, stream=out) as p:
        p.advance(2 << 20)
    text = out.getvalue()
    assert text.startswith("\rdownload [") and "2.0MiB/4.0MiB" in text and "ETA" in text
    assert text.endswith("\n") and "{" not in text


def test_termination_message_stays_under_4096_bytes():
    plan = {"parameters": 70_000_000_000, "fits": False, "reason": "too big", "notes": ["x" * 500] * 20}
    err = DownloadError("DoesNotFit", "m" * 10_000, plan=plan)
    text = fit(err.termination_message())
    message = json.loads(text)
    assert len(text.encode()) <= 4096
    assert message["error"]["reason"] == "DoesNotFit" and message["plan"]["parameters"] == 70_000_000_000


def test_termination_log_only_when_asked_or_present(tmp_path, monkeypatch):
    assert termination_log_path(str(tmp_path / "t")) == tmp_path / "t"
    default = tmp_path / "termination-log"
    monkeypatch.setattr("modelyard.commands.download.DEFAULT_TERMINATION_LOG", str(default))
    assert termination_log_path(None) is None  # not in a pod: no file is created
    default.write_text("")
    assert termination_log_path(None) == default


def test_bad_plan_flag_is_named_before_anything_moves(tmp_path, capsys):
    from modelyard.cli import main

    rc = main(["download", "--source", f"file://{tmp_path}", "--dest", str(tmp_path / "out"),
               "--plan-precision", "fp7"])
    assert rc == 2 and "--plan-precision: 'fp7' is not one of" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
