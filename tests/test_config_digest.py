"""A run's config.yaml cut short at a line end still parses, and eval (and every command that reads it) took defaults
for the options it lost without a word. run.json records its sha256 and size now, and a config.yaml that differs is
refused, naming the file, what differs and how to accept an edit made on purpose; older runs are read unchecked."""

import hashlib
import json
import re
import shutil

import pytest

from tunelab.cli import main
from tunelab.errors import RunDirError
from tunelab.rundir import CONFIG_FILE, RUN_FILE, RunInfo, read_config, write_info


@pytest.fixture
def run(tiny_run_dir, tmp_path):
    return shutil.copytree(tiny_run_dir, tmp_path / "run")


def _cut_short(run):
    """config.yaml as a copy interrupted at a line end leaves it: its first half of lines, which parses."""
    lines = (run / CONFIG_FILE).read_text().splitlines(keepends=True)
    (run / CONFIG_FILE).write_text("".join(lines[: len(lines) // 2]))


def test_a_trained_run_records_the_digest_of_its_config(run):
    recorded = json.loads((run / RUN_FILE).read_text())["config_digest"]
    data = (run / CONFIG_FILE).read_bytes()
    assert recorded == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_eval_refuses_a_config_cut_short_at_a_line_end(run, qa_file, capsys):
    _cut_short(run)
    assert main(["eval", str(run), "--data", str(qa_file), "--no-save"]) == 2
    err = capsys.readouterr().err
    assert f"{run / CONFIG_FILE}: not the config.yaml the run wrote" in err and "it was cut short" in err
    assert f"{run / RUN_FILE} records its digest" in err and '"config_digest"' in err and "Traceback" not in err


def test_a_config_edited_on_purpose_is_read_once_its_digest_is_written_into_run_json(run):
    config = (run / CONFIG_FILE).read_text()
    (run / CONFIG_FILE).write_text(re.sub(r"(?m)^  refusal: .*$", "  refusal: I cannot say.", config))
    with pytest.raises(RunDirError) as caught:
        read_config(run)
    message = str(caught.value)
    assert "content differs" in message or "it was edited" in message or "cut short" in message
    digest = json.loads(re.search(r'"config_digest" in .* to (\{.*\})\.$', message).group(1))
    raw = json.loads((run / RUN_FILE).read_text())
    (run / RUN_FILE).write_text(json.dumps(raw | {"config_digest": digest}))
    assert read_config(run).eval.refusal == "I cannot say."


def test_a_run_written_before_the_digest_is_read_unchecked(run):
    raw = json.loads((run / RUN_FILE).read_text())
    del raw["config_digest"]
    (run / RUN_FILE).write_text(json.dumps(raw))
    _cut_short(run)
    assert read_config(run) is not None


def test_every_write_of_either_file_keeps_the_digest_in_step(tmp_path):
    from tunelab.rundir import write_config

    write_config(tmp_path, "task: sft\n")  # no run.json yet: the next write_info records it
    write_info(tmp_path, RunInfo(base_model="m", method="lora"))
    assert json.loads((tmp_path / RUN_FILE).read_text())["config_digest"]["bytes"] == len("task: sft\n")
    write_config(tmp_path, "task: sft\noutput_dir: runs/a\n")  # a resume's allowed changes, a moved stage's paths
    assert read_config(tmp_path).output_dir == "runs/a"
    (tmp_path / CONFIG_FILE).write_text("task: sft\n")
    with pytest.raises(RunDirError, match="bytes of the 29 recorded: it was cut short"):
        read_config(tmp_path)


def _kept(overrides, steps):
    return overrides | {"train.max_steps": steps, "train.save_every": 1, "train.keep_checkpoints_after_finish": True}


def test_resume_refuses_an_edited_config_and_resumes_once_the_edit_is_accepted(tiny_overrides, cli_flags, capsys):
    """--resume read the run's config.yaml unchecked: an edit (or a cut) went into the comparison as the run's own
    options, and the resume went on from it."""
    from tunelab.training.recipe import train

    run = train(None, _kept(tiny_overrides, 2)).run_dir
    config = (run / CONFIG_FILE).read_text()
    (run / CONFIG_FILE).write_text(re.sub(r"(?m)^  log_every: .*$", "  log_every: 7", config))
    steps = json.loads((run / RUN_FILE).read_text())["steps"]
    assert main(["train", *cli_flags(_kept(tiny_overrides, 3)), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{run / CONFIG_FILE}: not the config.yaml the run wrote" in err and "Traceback" not in err
    assert f"{run / RUN_FILE} records its digest" in err and '"config_digest"' in err
    assert json.loads((run / RUN_FILE).read_text())["steps"] == steps  # nothing trained
    digest = json.loads(re.search(r'"config_digest" in .* to (\{.*\})\.', err).group(1))
    raw = json.loads((run / RUN_FILE).read_text())
    (run / RUN_FILE).write_text(json.dumps(raw | {"config_digest": digest}))
    assert main(["train", *cli_flags(_kept(tiny_overrides, 3)), "--resume"]) == 0
    assert "train.log_every: 7 -> 1 (allowed" in capsys.readouterr().out


def test_resume_of_a_run_written_before_the_digest_reads_its_config_unchecked(tiny_overrides):
    from tunelab.training.recipe import train

    run = train(None, _kept(tiny_overrides, 2)).run_dir
    raw = json.loads((run / RUN_FILE).read_text())
    del raw["config_digest"]
    (run / RUN_FILE).write_text(json.dumps(raw))
    (run / CONFIG_FILE).write_text((run / CONFIG_FILE).read_text() + "# my note\n")
    assert train(None, _kept(tiny_overrides, 3), resume=True).steps == 3
