"""Bad inputs to prune, the pruners, save_pruned and load_pruned: each is refused with a
RobustPruneError that says what was wrong, and the model is left exactly as it was.

One case per line; ``expect_refusal`` (tests/badinput.py) checks the error *and* that the
model's state_dict, parameters, modes, flags, grads, hooks and history are unchanged.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from badinput import Case, assert_unchanged, expect_refusal, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustprune.checkpoint import CheckpointError, load_pruned, save_pruned
from robustprune.errors import ModelNotSupportedError
from robustprune.models import create_model
from robustprune.pruners import EpsilonPruner, FixedRatioPruner, SpectralPruner, prune

X = torch.rand(2, 8)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def p(**kw):
    """prune(model, example_inputs=X, **kw)."""
    return lambda m: prune(m, **{"example_inputs": X, **kw})


PRUNE_CASES = [
    Case("method-unknown", p(method="nope", eps=0.1), "Unknown pruning method"),
    Case("method-not-str", p(method=3, eps=0.1), "Unknown pruning method"),
    Case("eps-str", p(eps="a"), "eps"),
    Case("eps-nan", p(eps=math.nan), "eps"),
    Case("eps-inf", p(eps=math.inf), "eps"),
    Case("eps-zero", p(eps=0.0), "eps"),
    Case("eps-one", p(eps=1.0), "eps"),
    Case("eps-bool", p(eps=True), "eps"),
    Case("eps-empty-dict", p(eps={}), "empty"),
    Case("eps-glob-matches-nothing", p(eps={"nope*": 0.1}), "matches no prunable layer"),
    Case("eps-and-ratio-for-fixed", p(method="fixed", eps=0.1, ratio=0.2), "eps applies"),
    Case("target-zero", p(target_macs=0.0), "target_macs"),
    Case("target-above-one", p(target_macs=1.5), "target_macs"),
    Case("target-nan", p(target_macs=math.nan), "target_macs"),
    Case("target-str", p(target_macs="0.5"), "target_macs"),
    Case("target-bool", p(target_macs=True), "target_macs"),
    Case("target-unreachable", p(method="fixed", target_macs=0.001), "unreachable"),
    Case("ratio-one", p(method="fixed", ratio=1.0), "ratio"),
    Case("ratio-nan", p(method="fixed", ratio=math.nan), "ratio"),
    Case("ratio-missing", p(method="fixed"), "ratio|target_macs"),
    Case("unknown-option", p(eps=0.1, bogus=1), "unknown option"),
    Case("ignored-type", p(eps=0.1, ignored_layers=nn.Linear), "type"),
    Case("ignored-foreign-module", p(eps=0.1, ignored_layers=[nn.Linear(2, 2)]), "not a submodule"),
    Case("ignored-missing-name", p(eps=0.1, ignored_layers=["nope"]), "no such module"),
    Case("ignored-int", p(eps=0.1, ignored_layers=3), "ignored_layers"),
    Case("macs-tolerance-zero", p(target_macs=0.5, macs_tolerance=0), "macs_tolerance"),
    Case("round-to-zero", p(eps=0.1, round_to=0), "round_to"),
    Case("min-keep-zero", p(eps=0.1, min_keep=0), "min_keep"),
    Case("importance-unknown", p(eps=0.1, importance="nope"), "importance|Unknown"),
    Case("inputs-empty-batch", p(eps=0.1, example_inputs=torch.rand(0, 8)), "non-empty batch"),
    Case("inputs-empty-tuple", p(eps=0.1, example_inputs=()), "example_inputs"),
    Case("inputs-scalar", p(eps=0.1, example_inputs=torch.tensor(1.0)), "batch dimension"),
    Case("inputs-str", p(eps=0.1, example_inputs="x"), "example_inputs"),
    Case("inputs-wrong-shape", p(eps=0.1, example_inputs=torch.rand(2, 5)), "does not accept"),
    Case("spectral-eps-and-target", p(method="spectral", eps=0.1, target_macs=0.5), "exactly one"),
    Case("spectral-wrong-shape", p(method="spectral", eps=0.1, example_inputs=torch.rand(2, 5)), "does not accept"),
    Case("sensitivity-without-data", p(method="sensitivity", ratio=0.2), "needs"),
    Case("model-not-a-module", lambda m: prune("model", eps=0.1, example_inputs=X), "torch.nn.Module"),
]


@pytest.mark.parametrize("case", PRUNE_CASES, ids=repr)
def test_prune_refuses_bad_input_and_leaves_the_model_untouched(case):
    model = mlp().train()
    model[2].weight.requires_grad_(False)
    model(X).sum().backward()
    expect_refusal(case, model)


class Recurrent(nn.Module):
    def __init__(self, cls: type[nn.RNNBase]) -> None:
        super().__init__()
        self.embed, self.rnn, self.head = nn.Linear(8, 16), cls(16, 16, batch_first=True), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(x))[0][:, -1])


def tied() -> nn.Module:
    model = mlp()
    model.insert(4, nn.Linear(16, 16))
    model[4].weight = model[2].weight
    return model


def meta() -> nn.Module:
    with torch.device("meta"):
        return mlp()


SEQ = torch.rand(2, 5, 8)

#: (case, model builder): models the pruners refuse, whatever the setting
MODEL_CASES = [
    (Case("gru", p(eps=0.1, example_inputs=SEQ), "GRU"), lambda: Recurrent(nn.GRU)),
    (Case("rnn", p(method="fixed", ratio=0.3, example_inputs=SEQ), "RNN"), lambda: Recurrent(nn.RNN)),
    (Case("tied-weights-epsilon", p(eps=0.3), "tied"), tied),
    (Case("tied-weights-target", p(method="global", target_macs=0.5), "tied"), tied),
]


@pytest.mark.parametrize(("case", "build"), MODEL_CASES, ids=[c.id for c, _ in MODEL_CASES])
def test_prune_refuses_unsupported_models_clearly(case, build):
    error = expect_refusal(case, build())
    assert isinstance(error, ModelNotSupportedError)


@pytest.mark.parametrize("call", [p(eps=0.1), p(method="spectral", eps=0.1), lambda m: prune(m, eps=0.1)],
                         ids=["epsilon", "spectral", "inferred-inputs"])
def test_prune_refuses_a_meta_device_model(call):
    model = meta()
    params = [(n, id(t), t.shape) for n, t in model.named_parameters()]
    with pytest.raises(ModelNotSupportedError, match="meta device"):
        call(model)
    assert [(n, id(t), t.shape) for n, t in model.named_parameters()] == params  # equal() has no meta kernel
    assert not hasattr(model, "robustprune_history")


def test_spectral_pruning_keeps_tied_layers_dense_and_the_tie_intact():
    model = tied()
    prune(model, method="spectral", eps=0.9, example_inputs=X)
    assert model[4].weight is model[2].weight


@pytest.mark.parametrize("build", [nn.Sequential, lambda: nn.Sequential(nn.ReLU()), lambda: nn.Sequential(nn.Linear(8, 3))])
def test_a_model_with_no_prunable_layer_warns(build):
    model = build()
    with pytest.warns(UserWarning, match="no prunable layer"):
        report = prune(model, eps=0.1, example_inputs=X)
    assert report.rows == ()


@pytest.mark.parametrize("pruner", [
    lambda: EpsilonPruner(target_macs=1.0), lambda: FixedRatioPruner(target_macs=1.0),
    lambda: SpectralPruner(target_macs=1.0),
])
def test_target_macs_one_leaves_the_model_unpruned(pruner):
    model = mlp()
    before = snapshot(model)
    report = pruner()(model, X)
    assert report.macs_kept == 1.0 and report.params_kept == 1.0
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.state.items()}
    for k, v in before.state.items():
        assert torch.equal(model.state_dict()[k], v)


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not 0 < v <= 1),
                 st.text(max_size=3), st.booleans(), st.none().map(lambda _: [0.5])))
def test_any_target_macs_outside_0_1_is_refused(value):
    model = mlp()
    before = snapshot(model)
    with pytest.raises(Exception) as info:
        prune(model, target_macs=value, example_inputs=X)
    assert "target_macs" in str(info.value)
    assert_unchanged(model, before)


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(path, payload) of a valid checkpoint of a pruned fcn."""
    model = create_model("fcn", width=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune(model, eps=0.4)
        prune(model, method="spectral", eps=0.9)
    path = save_pruned(model, tmp_path_factory.mktemp("ckpt") / "good.pt")
    return path, torch.load(path, weights_only=True)


def _spectral_layer(payload):
    return next(s for s in payload["history"] if s["kind"] == "spectral")["layers"][0]["name"]


MISSING = object()

#: (id, field, new value or a function of the payload, message regex)
PAYLOAD_CASES = [
    ("arch-missing", "arch", MISSING, "'arch'"),
    ("arch-none", "arch", None, "'arch'"),
    ("arch-int", "arch", 5, "'arch'"),
    ("arch-unknown", "arch", "not-registered", "Unknown model"),
    ("state-missing", "state_dict", MISSING, "'state_dict'"),
    ("state-str", "state_dict", "weights", "'state_dict'"),
    ("state-non-tensor-value", "state_dict", lambda pl: {k: 1 for k in pl["state_dict"]}, "'state_dict'"),
    ("state-wrong-shape", "state_dict", lambda pl: {k: torch.zeros(1) for k in pl["state_dict"]}, "state_dict"),
    ("state-missing-key", "state_dict", lambda pl: dict(list(pl["state_dict"].items())[1:]), "state_dict: missing"),
    ("version-str", "version", "1", "'version'"),
    ("version-missing", "version", MISSING, "'version'"),
    ("version-float", "version", 1.5, "'version'"),
    ("version-newer", "version", 99, "Upgrade robustprune"),
    ("arch-kwargs-str", "arch_kwargs", "width=16", "'arch_kwargs'"),
    ("arch-kwargs-list", "arch_kwargs", [1, 2], "'arch_kwargs'"),
    ("arch-kwargs-bad-option", "arch_kwargs", {"widht": 16}, "arch_kwargs"),
    ("input-shape-str", "input_shape", "abc", "'input_shape'"),
    ("input-shape-negative", "input_shape", [1, -8, 8], "'input_shape'"),
    ("input-shape-float", "input_shape", [1, 8.5, 8], "'input_shape'"),
    ("training-str", "training", "yes", "'training'"),
    ("meta-str", "meta", "x", "'meta'"),
    ("history-str", "history", "x", "history"),
    ("history-step-not-dict", "history", [3], r"history\[0\]"),
    ("history-unknown-kind", "history", [{"kind": "magic"}], "unknown kind"),
    ("history-inputs-str", "history", [{"kind": "channels", "inputs": "x", "groups": []}], r"history\[0\]\.inputs"),
    ("history-inputs-bad-dtype", "history",
     [{"kind": "channels", "inputs": [{"shape": [1, 64], "dtype": "nope"}], "groups": []}], "dtype"),
    ("history-group-short", "history",
     [{"kind": "channels", "inputs": [{"shape": [1, 1, 8, 8], "dtype": "float32"}], "groups": [["net.1", True]]}],
     r"groups\[0\]"),
    ("history-group-bad-indices", "history",
     [{"kind": "channels", "inputs": [{"shape": [1, 1, 8, 8], "dtype": "float32"}], "groups": [["x", True, ["a"]]]}],
     r"groups\[0\]"),
    ("history-group-unknown-layer", "history",
     [{"kind": "channels", "inputs": [{"shape": [1, 1, 8, 8], "dtype": "float32"}], "groups": [["nope", True, [0]]]}],
     "history"),
    ("history-spectral-layers-missing", "history", [{"kind": "spectral"}], r"history\[0\]\.layers"),
    ("history-spectral-rank-zero", "history", lambda pl: [{"kind": "spectral", "layers": [{"name": _spectral_layer(pl), "rank": 0}]}], "rank"),
    ("history-spectral-missing-layer", "history", [{"kind": "spectral", "layers": [{"name": "nope", "rank": 2}]}], "no layer 'nope'"),
    ("history-spectral-rank-too-big", "history", lambda pl: [{"kind": "spectral", "layers": [{"name": _spectral_layer(pl), "rank": 10_000}]}], "rank 10000"),
]


@pytest.mark.parametrize(("field", "value", "match"), [c[1:] for c in PAYLOAD_CASES], ids=[c[0] for c in PAYLOAD_CASES])
def test_load_pruned_refuses_a_malformed_payload_naming_the_field(saved, tmp_path, field, value, match):
    _path, good = saved
    payload = dict(good)
    if value is MISSING:
        del payload[field]
    else:
        payload[field] = value(good) if callable(value) else value
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=match):
        load_pruned(path)


def test_the_good_checkpoint_still_loads(saved):
    path, _ = saved
    assert isinstance(load_pruned(path), nn.Module)


def _fcn() -> nn.Module:
    return create_model("fcn", width=16)


def save_case(id_, match, path=lambda tmp: tmp / "m.pt", **kw):
    return id_, (lambda tmp: (lambda m: save_pruned(m, path(tmp), **kw))), match


def _file(tmp):
    (tmp / "afile").write_text("x")
    return tmp / "afile" / "m.pt"


SAVE_CASES = [
    save_case("arch-unregistered", "register_model", arch="not-registered"),
    save_case("arch-timm-unknown", "register_model", arch="timm:no_such_net"),
    save_case("arch-int", "arch", arch=3),
    save_case("arch-empty", "arch", arch=""),
    save_case("path-is-a-directory", "is a directory", path=lambda tmp: tmp),
    save_case("parent-is-a-file", "Cannot create the directory", path=_file),
    save_case("path-not-a-path", "path", path=lambda tmp: 3),
    save_case("meta-not-plain", "meta", meta={"fn": nn.ReLU()}),
    save_case("history-not-plain", "history", history=[{"kind": object()}]),
]


@pytest.mark.parametrize(("make", "match"), [c[1:] for c in SAVE_CASES], ids=[c[0] for c in SAVE_CASES])
def test_save_pruned_refuses_bad_input_and_writes_nothing(tmp_path, make, match):
    expect_refusal(Case("save", make(tmp_path), match), _fcn())
    assert not (tmp_path / "m.pt").exists()
    assert not [f for f in tmp_path.rglob("*.tmp")]
