"""`mhc report` on damaged logs: it reports what it skipped and never rewrites a run's own
summary from them."""
import json

from torch_mhc.train.cli import main


def _cut_line(path, index, keep=0.5):
    lines = path.read_text().splitlines()
    lines[index] = lines[index][:int(len(lines[index]) * keep)]
    path.write_text("\n".join(lines) + ("\n" if index != len(lines) - 1 else ""))
    return len(lines) if index == -1 else index + 1  # the 1-based line number


def test_report_with_a_torn_last_line_keeps_the_summary(flags, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *flags(max_steps=3), "--out", str(out)]) == 0
    summary = (out / "summary.json").read_bytes()
    assert json.loads(summary)["completed"] and json.loads(summary)["peak_memory_mb"] > 0
    line = _cut_line(out / "log.jsonl", -1)  # the end record, cut in half
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"unreadable line(s) {line}, skipped; summary.json left as it was" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (out / "summary.json").read_bytes() == summary
    html = (out / "report.html").read_text()
    assert f"unreadable line(s) {line}" in html and "the one the run wrote" in html


def test_report_of_a_comparison_with_a_corrupt_middle_line(flags, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *flags(max_steps=3), "--modes", "residual,mhc", "--out", str(out),
                 "--no-report"]) == 0
    summary = (out / "summary.json").read_bytes()
    line = _cut_line(out / "mhc" / "log.jsonl", 4, keep=0.3)
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"the mhc log has unreadable line(s) {line}" in err and "residual" not in err
    assert (out / "summary.json").read_bytes() == summary
    assert (out / "report.html").is_file() and (out / "plots" / "loss.png").is_file()


def test_report_writes_a_missing_summary_from_the_readable_lines(flags, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *flags(max_steps=3), "--out", str(out)]) == 0
    (out / "summary.json").unlink()
    line = _cut_line(out / "log.jsonl", 3, keep=0.2)
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert (f"line(s) {line}, skipped; summary.json written from the readable lines"
            in capsys.readouterr().err)
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


def test_report_of_a_log_with_nothing_readable_is_an_error(tmp_path, capsys):
    (tmp_path / "log.jsonl").write_text('{"type": "config", "conf\n\x00\x01garbage\n')
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds no readable record (line(s) 1, 2 are not valid JSON)" in err
    assert err.count("\n") == 1 and not (tmp_path / "summary.json").exists()
