"""Training progress: steps done of the total and the time left, as a tqdm bar on a terminal
and as plain lines elsewhere. Driven with a fake clock: no model runs."""

import io
from types import SimpleNamespace

from emeval.training.trainers import ProgressCallback


def drive(callback: ProgressCallback, steps: int, seconds_per_step: float, max_steps: int = 10):
    now = [100.0]
    callback.clock = lambda: now[0]
    state = SimpleNamespace(global_step=0, max_steps=max_steps)
    callback.on_train_begin(None, state, None)
    for step in range(1, steps + 1):
        now[0] += seconds_per_step
        state.global_step = step
        callback.on_step_end(None, state, None)
        callback.on_log(None, state, None, logs={"loss": 1.5, "mitigation/kl": 0.25})
    callback.on_train_end(None, state, None)


def test_plain_lines_count_steps_and_estimate_the_time_left():
    lines = []
    drive(ProgressCallback("sft", lines.append), steps=4, seconds_per_step=30)
    assert lines[0] == "[sft] step 1/10 loss=1.5 kl=0.25 (30.0 s/step, 0:04:30 left)"
    assert lines[-1] == "[sft] step 4/10 loss=1.5 kl=0.25 (30.0 s/step, 0:03:00 left)"
    unknown = []
    drive(ProgressCallback("sft", unknown.append), steps=1, seconds_per_step=2, max_steps=-1)
    assert unknown == ["[sft] step 1/? loss=1.5 kl=0.25 (2.0 s/step)"]


def test_a_terminal_gets_a_bar_with_counts_and_metrics():
    lines, screen = [], io.StringIO()
    drive(ProgressCallback("grpo", lines.append, bar_file=screen), steps=3, seconds_per_step=1)
    shown = screen.getvalue()
    assert lines == []  # the bar replaces the lines
    assert "[grpo]" in shown and "3/10" in shown and "loss=1.5 kl=0.25" in shown
