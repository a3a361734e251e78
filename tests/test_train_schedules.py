"""Pruning schedules inside fit (iterative, during-training) and robust distillation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustprune.attacks import AdversarialConfig
from robustprune.errors import InvalidArgumentError, RobustPruneError
from robustprune.models import create_model
from robustprune.pruners import count_macs_params
from robustprune.pruners.schedules import Schedule, ScheduledPruning, schedule_targets
from robustprune.train import DistillConfig, fit

ADV = AdversarialConfig(kind="pgd", eps=0.1, steps=2)


def _cnn(digits, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    info = digits.info
    return create_model("cnn-small", num_classes=info.num_classes, input_shape=info.input_shape,
                        mean=info.mean, std=info.std, widths=[8, 16])


def _macs(model: nn.Module) -> int:
    return count_macs_params(model, torch.rand(1, 1, 8, 8))[0]


def _loader(digits):
    """A fresh copy of the train loader: fit continues the caller's loader RNG, so runs
    that must match bit for bit each start from the same loader state."""
    return copy.deepcopy(digits.train)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- schedule arithmetic


def test_schedule_epochs_follow_each_kind():
    assert Schedule().epochs(5) == (0,)
    assert Schedule(kind="iterative", steps=3).epochs(6) == (0, 2, 4)
    assert Schedule(kind="iterative", steps=3).epochs(1) == (0, 0, 0)  # all before the only epoch
    assert Schedule(kind="during-training", at=2, steps=2).epochs(8) == (2, 3)
    assert Schedule(kind="during-training", at=0.25, steps=2, every=2).epochs(8) == (2, 4)


def test_schedule_targets_are_geometric_in_macs_and_end_at_the_target():
    targets = schedule_targets(0.125, 3)
    assert targets == pytest.approx((0.5, 0.25, 0.125))
    assert schedule_targets(0.3, 1) == (0.3,)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"kind": "sometimes"}, "kind"),
        ({"kind": "iterative", "steps": 0}, "steps"),
        ({"kind": "one-shot", "steps": 2}, "steps"),
        ({"kind": "during-training"}, "at"),
        ({"kind": "during-training", "at": -1}, "at"),
        ({"kind": "during-training", "at": 1.5}, "at"),
        ({"kind": "iterative", "steps": 2, "at": 3}, "at"),
        ({"kind": "during-training", "at": 1, "every": 0}, "every"),
    ],
)
def test_bad_schedules_are_refused_naming_the_argument(kwargs, argument):
    with pytest.raises(InvalidArgumentError) as info:
        Schedule(**kwargs)
    assert info.value.argument == argument


def test_scheduled_pruning_checks_method_target_and_options_up_front():
    with pytest.raises(RobustPruneError, match="Unknown pruning method"):
        ScheduledPruning(target_macs=0.5, method="magic")
    with pytest.raises(InvalidArgumentError, match="target_macs"):
        ScheduledPruning(target_macs=1.5)
    with pytest.raises(InvalidArgumentError, match="eps"):
        ScheduledPruning(target_macs=0.5, options={"eps": 0.1})
    with pytest.raises(RobustPruneError):
        ScheduledPruning(target_macs=0.5, options={"min_keep": 0})


# --------------------------------------------------------------------------- fit with pruning


def test_iterative_pruning_reaches_the_target_in_steps_with_finetuning_between(digits):
    model = _cnn(digits)
    before = _macs(model)
    plan = ScheduledPruning(target_macs=0.4, method="fixed", schedule=Schedule(kind="iterative", steps=3))
    result = fit(model, digits, 3, lr=0.02, progress=False, pruning=plan)
    assert len(model.robustprune_history) == 3
    assert [round(t, 4) for t in result.pruning["targets"]] == [round(0.4 ** (i / 3), 4) for i in (1, 2, 3)]
    assert result.pruning["epochs_at"] == [0, 1, 2]
    assert _macs(model) / before == pytest.approx(0.4, abs=0.06)
    assert result.final_test_accuracy > 0.3  # it still trains after each step


def test_a_restarting_schedule_starts_the_learning_rate_over_after_each_step(digits):
    model = _cnn(digits)
    plan = ScheduledPruning(target_macs=0.5, method="fixed",
                            schedule=Schedule(kind="iterative", steps=2, restart=True))
    result = fit(model, digits.train, 4, lr=0.05, progress=False, pruning=plan)
    lrs = [h.lr for h in result.history]  # the lr at the end of each epoch
    assert lrs[1] < lrs[0] and lrs[2] > lrs[1] and lrs[3] < lrs[2]  # two cosine cycles of 2 epochs
    assert lrs[1] == pytest.approx(lrs[3], rel=1e-6)
    continued = _cnn(digits)
    plain = fit(continued, digits.train, 4, lr=0.05, progress=False,
                pruning=ScheduledPruning(target_macs=0.5, method="fixed", schedule=Schedule(kind="iterative", steps=2)))
    assert [h.lr for h in plain.history] == sorted((h.lr for h in plain.history), reverse=True)


def test_resume_inside_a_restarted_schedule_is_bit_identical(digits, tmp_path):
    plan = ScheduledPruning(target_macs=0.5, method="fixed",
                            schedule=Schedule(kind="iterative", steps=2, restart=True))
    reference = _cnn(digits)
    fit(reference, _loader(digits), 4, lr=0.05, progress=False, pruning=plan, seed=2)

    class Killed(Exception):
        pass

    def kill(stats):
        if stats.epoch == 3:
            raise Killed

    with pytest.raises(Killed):
        fit(_cnn(digits), _loader(digits), 4, lr=0.05, progress=False, pruning=plan, seed=2,
            checkpoint_dir=tmp_path, on_epoch_end=kill)
    resumed = _cnn(digits)
    fit(resumed, _loader(digits), 4, lr=0.05, progress=False, pruning=plan, seed=2, checkpoint_dir=tmp_path)
    assert _same_weights(resumed, reference)


def test_during_training_prunes_at_the_chosen_epoch_and_keeps_training(digits):
    model = _cnn(digits)
    before = _macs(model)
    plan = ScheduledPruning(target_macs=0.5, method="epsilon",
                            schedule=Schedule(kind="during-training", at=2))
    seen = []
    result = fit(model, digits, 4, lr=0.05, progress=False, pruning=plan,
                 on_epoch_end=lambda s: seen.append(len(getattr(model, "robustprune_history", []))))
    assert seen == [0, 0, 1, 1]  # pruned before the third epoch
    assert _macs(model) / before == pytest.approx(0.5, abs=0.05)
    assert len(result.history) == 4 and result.history[-1].lr < result.history[1].lr


def test_resume_across_a_pruning_step_is_bit_identical(digits, tmp_path):
    plan = ScheduledPruning(target_macs=0.5, method="global",
                            schedule=Schedule(kind="during-training", at=1, steps=2))
    reference = _cnn(digits)
    fit(reference, _loader(digits), 4, lr=0.05, adversarial=ADV, progress=False, pruning=plan,
        checkpoint_dir=tmp_path / "a", seed=3)

    class Killed(Exception):
        pass

    def kill(stats):
        if stats.epoch == 3:
            raise Killed

    interrupted = _cnn(digits)
    with pytest.raises(Killed):
        fit(interrupted, _loader(digits), 4, lr=0.05, adversarial=ADV, progress=False, pruning=plan,
            checkpoint_dir=tmp_path / "b", seed=3, on_epoch_end=kill)
    resumed = _cnn(digits)  # a fresh, dense model: the checkpoint's steps are replayed on it
    result = fit(resumed, _loader(digits), 4, lr=0.05, adversarial=ADV, progress=False, pruning=plan,
                 checkpoint_dir=tmp_path / "b", seed=3)
    assert result.resumed_from_epoch == 3
    assert len(resumed.robustprune_history) == 2
    assert _same_weights(resumed, reference)


def test_a_dense_snapshot_starts_a_during_training_run_as_if_trained_from_scratch(digits, tmp_path):
    plan = ScheduledPruning(target_macs=0.5, method="fixed",
                            schedule=Schedule(kind="during-training", at=2))
    from_scratch = _cnn(digits)
    fit(from_scratch, _loader(digits), 4, lr=0.05, progress=False, pruning=plan, seed=1)
    dense = _cnn(digits)
    fit(dense, _loader(digits), 4, lr=0.05, progress=False, seed=1, checkpoint_dir=tmp_path / "dense",
        keep_checkpoints=(2,))
    assert (tmp_path / "dense" / "epoch2.pt").is_file()
    continued = _cnn(digits)
    result = fit(continued, _loader(digits), 4, lr=0.05, progress=False, pruning=plan, seed=1,
                 checkpoint_dir=tmp_path / "pruned", resume_from=tmp_path / "dense" / "epoch2.pt")
    assert result.resumed_from_epoch == 2
    assert _same_weights(continued, from_scratch)


def test_a_snapshot_after_the_pruning_epoch_is_refused(digits, tmp_path):
    dense = _cnn(digits)
    fit(dense, digits.train, 3, lr=0.05, progress=False, checkpoint_dir=tmp_path / "d", keep_checkpoints=(2,))
    plan = ScheduledPruning(target_macs=0.5, method="fixed", schedule=Schedule(kind="during-training", at=1))
    with pytest.raises(InvalidArgumentError, match="different arguments"):
        fit(_cnn(digits), digits.train, 3, lr=0.05, progress=False, pruning=plan,
            resume_from=tmp_path / "d" / "epoch2.pt")


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"pruning": "fixed"}, "pruning"),
        ({"pruning": ScheduledPruning(target_macs=0.5, schedule=Schedule(kind="during-training", at=5))}, "at"),
        ({"distill": {"weight": 0.5}}, "distill"),
        ({"keep_checkpoints": (0,)}, "keep_checkpoints"),
        ({"keep_checkpoints": (1,)}, "keep_checkpoints"),  # without checkpoint_dir
        ({"resume_from": "/nonexistent/last.pt"}, "resume_from"),
    ],
)
def test_bad_pruning_and_distillation_arguments_are_refused_before_training(digits, kwargs, argument):
    model = _cnn(digits)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InvalidArgumentError) as info:
        fit(model, digits.train, 2, progress=False, **kwargs)
    assert info.value.argument == argument
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- distillation


def test_distillation_with_weight_zero_trains_exactly_like_no_distillation(digits):
    teacher = _cnn(digits, seed=5)
    a, b = _cnn(digits), _cnn(digits)
    fit(a, _loader(digits), 1, lr=0.05, adversarial=ADV, progress=False)
    fit(b, _loader(digits), 1, lr=0.05, adversarial=ADV, progress=False,
        distill=DistillConfig(teacher=teacher, weight=0.0))
    assert _same_weights(a, b)


def test_distillation_pulls_the_student_towards_the_teacher_and_leaves_the_teacher_alone(digits):
    teacher = _cnn(digits, seed=5)
    fit(teacher, digits.train, 2, lr=0.05, progress=False)
    with torch.no_grad():  # a teacher that predicts the next class: far from the labels
        teacher.head.weight.copy_(teacher.head.weight.roll(1, 0))
        teacher.head.bias.copy_(teacher.head.bias.roll(1, 0))
    teacher.train()
    frozen = copy.deepcopy(teacher.state_dict())
    x = torch.stack([digits.test.dataset[i][0] for i in range(64)])

    def kl_to_teacher(student: nn.Module) -> float:
        student.eval()
        with torch.no_grad():
            t, s = torch.log_softmax(teacher.eval()(x), 1), torch.log_softmax(student(x), 1)
        teacher.train()
        return float(torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean"))

    plain, distilled = _cnn(digits), _cnn(digits)
    fit(plain, digits.train, 1, lr=0.05, adversarial=ADV, progress=False)
    for target in ("clean", "adversarial"):
        student = copy.deepcopy(distilled)
        fit(student, digits.train, 1, lr=0.05, adversarial=ADV, progress=False,
            distill=DistillConfig(teacher=teacher, weight=1.0, temperature=2.0, target=target))
        assert kl_to_teacher(student) < kl_to_teacher(plain)
    assert teacher.training  # its mode is restored
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())


def test_distillation_combines_with_trades(digits):
    teacher = _cnn(digits, seed=5)
    student = _cnn(digits)
    result = fit(student, digits.train, 1, lr=0.05, progress=False,
                 adversarial=AdversarialConfig(kind="trades", eps=0.1, steps=2),
                 distill=DistillConfig(teacher=teacher, weight=0.5))
    assert result.distill["weight"] == 0.5 and torch.isfinite(torch.tensor(result.history[0].loss))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d, student: student, "another model"),
        (lambda d, student: create_model("cnn-small", num_classes=7, input_shape=(1, 8, 8), widths=[4, 8]),
         "does not match"),
        (lambda d, student: _cnn(d).to("meta"), "on meta"),
    ],
)
def test_a_teacher_that_cannot_teach_this_student_is_refused_up_front(digits, make, match):
    student = _cnn(digits)
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(InvalidArgumentError, match=match):
        fit(student, digits.train, 1, progress=False, distill=DistillConfig(teacher=make(digits, student)))
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


@pytest.mark.parametrize(
    "kwargs, argument",
    [({"weight": 1.5}, "weight"), ({"temperature": 0}, "temperature"), ({"target": "soft"}, "target"),
     ({"weight": float("nan")}, "weight")],
)
def test_bad_distillation_settings_are_refused(digits, kwargs, argument):
    with pytest.raises(InvalidArgumentError) as info:
        DistillConfig(teacher=_cnn(digits), **kwargs)
    assert info.value.argument == argument
