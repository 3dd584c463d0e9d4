"""The console: one readable line per logging step (adapt/trainers/console.py), and the library warnings that tell the
user nothing filtered in one place (adapt/console.py), the ones about the user's recipe kept."""

import warnings

from transformers import TrainerControl, TrainerState

from adapt.console import quiet_console
from adapt.trainers.console import ConsoleProgress, metrics_line


def test_a_logging_step_is_one_line_of_the_numbers_a_person_follows():
    logs = {"loss": 0.12345678, "aux_loss": 2.0, "z_loss": 1.5, "learning_rate": 3e-4, "grad_norm": 0.5,
            "router/layer_0/load_ratio": 3.0, "router/load_ratio_max": 3.0, "epoch": 1.5, "num_tokens": 1000.0}
    assert metrics_line(10, 500, logs) == ("step 10/500 (epoch 1.50)  loss 0.1235  aux_loss 2  z_loss 1.5  lr 0.0003  "
                                           "grad_norm 0.5  max load ratio 3")
    assert metrics_line(3, 6, {"loss": 1.0, "rewards/margins": 0.25}) == "step 3/6  loss 1  reward margin 0.25"


def test_without_a_terminal_there_is_no_bar_and_each_log_is_printed(capsys):
    console = ConsoleProgress(bars=False)
    state, control = TrainerState(global_step=0, max_steps=2), TrainerControl()
    console.on_train_begin(None, state, control)
    state.global_step = 1
    console.on_step_end(None, state, control)
    console.on_log(None, state, control, logs={"loss": 2.0, "grad_norm": 1.0})
    console.on_log(None, state, control, logs={"train_runtime": 3.0})  # the summary: metrics.jsonl only
    console.on_train_end(None, state, control)
    assert console.training_bar is None
    assert capsys.readouterr().out == "step 1/2  loss 2  grad_norm 1\n"


def test_known_library_noise_is_filtered_and_a_recipe_warning_is_not():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_console()  # its filters go in front of "always"
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
                      stacklevel=2)
        warnings.warn("'pin_memory' argument is set as true but no accelerator is found, then ...", UserWarning,
                      stacklevel=2)
        warnings.warn("`gradient_checkpointing` is deprecated and will be removed in v6. Use `activation_checkpointing`"
                      " instead.", FutureWarning, stacklevel=2)
    assert [str(w.message)[:24] for w in seen] == ["`gradient_checkpointing`"]
