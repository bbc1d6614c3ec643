"""train stage on a tiny model: loss mask, iteration semantics, resume after a kill, guards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import pytest
from conftest import ROOT, train_flags, write_jsonl

from src.data.batches import BatchIterator
from src.data.sft import make_dataset
from src.modeling.losses import masked_loss
from src.modeling.source import load_tokenizer
from src.train_sft import main


def test_mask_trains_exactly_the_assistant_turn(tiny_model, genrm_rows):
    tok = load_tokenizer(str(tiny_model))
    rows = genrm_rows[:4]
    ds = make_dataset(rows, tok, mask_prompt=True)
    batch, lengths = next(BatchIterator(0)(ds, 4, 2048))
    vocab = 512
    logits = mx.random.normal((*batch[:, :-1].shape, vocab), key=mx.random.key(0))
    loss, ntoks = masked_loss(lambda x: logits, batch, lengths)

    b, ln = np.array(batch), np.array(lengths)
    logp = np.array(logits) - np.log(np.exp(np.array(logits)).sum(-1, keepdims=True))
    total, count = 0.0, 0
    by_len = sorted(range(len(rows)), key=lambda i: len(ds[i][0]))  # the iterator sorts by length
    for j, (offset, length) in enumerate(ln):
        trained = list(range(offset, length))  # indices of target tokens
        for t in trained:
            total -= logp[j, t - 1, b[j, t]]
        count += len(trained)
        text = tok.decode(b[j, offset:length].tolist())
        content = rows[by_len[j]]["messages"][1]["content"]
        # The assistant's words and its end-of-turn, nothing of the prompt or the model header,
        # nothing past the row's end.
        assert text == content + "<end_of_turn>\n"
        assert "<start_of_turn>model" in tok.decode(b[j, :offset].tolist())
        assert length == len(ds[by_len[j]][0]) and (b[j, length:] == 0).all()
    assert int(ntoks) == count
    assert float(loss) == pytest.approx(total / count, rel=1e-5)

    # mlx-lm 0.32.2's default_loss counts one padding target per row (its PR 1697, unmerged).
    from mlx_lm.tuner.trainer import default_loss

    _, upstream = default_loss(lambda x: logits, batch, lengths)
    assert int(upstream) == count + len(rows)


@pytest.mark.parametrize("kernels", ["fast", "exact"])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_one_exp_cross_entropy_equals_mlx_cross_entropy(dtype, kernels):
    """The CPU loss keeps the forward softmax for the backward; value and gradient must be
    MLX's own ``cross_entropy``'s, including under a mask and for extreme logits."""
    import mlx.nn as nn

    from src.modeling.losses import token_cross_entropy

    mx.random.seed(0)
    logits = (mx.random.normal((3, 17, 301)) * 8).astype(dtype)
    logits[0, 0, 5] = 80.0  # a peaked row: naive exp would overflow
    targets = mx.random.randint(0, 301, (3, 17))
    mask = mx.random.uniform(shape=(3, 17)) > 0.3

    def ours(x):
        return (token_cross_entropy(x, targets, kernels) * mask).sum()

    def mlx(x):
        return (nn.losses.cross_entropy(x.astype(mx.float32), targets) * mask).sum()

    (v1, g1), (v2, g2) = mx.value_and_grad(ours)(logits), mx.value_and_grad(mlx)(logits)
    tol = 1e-5 if dtype == mx.float32 else 1e-2
    assert g1.dtype == dtype
    assert abs(v1.item() - v2.item()) <= tol * abs(v2.item())
    assert mx.abs(g1.astype(mx.float32) - g2.astype(mx.float32)).max().item() <= tol
    assert mx.abs(g1).sum().item() > 0


def test_logits_at_trained_positions_only_give_the_same_loss_and_gradient(tiny_model, genrm_rows):
    """With mask_prompt most positions are prompt; the loss then runs the LM head on the trained
    positions only. Value, token count and LoRA gradients must equal the every-position loss."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.models import gemma
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from src.modeling.head import checked_head

    model, tok = load(str(tiny_model))
    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": 4, "scale": 20.0, "dropout": 0.0})
    for _, p in tree_flatten(model.trainable_parameters()):  # non-zero B: gradients flow
        p += 0.01 * mx.random.normal(p.shape, key=mx.random.key(1))
    ds = make_dataset(genrm_rows[:7], tok, mask_prompt=True)
    batches = list(BatchIterator(0, positions=True)(ds, 4, 2048))  # last one padded
    head = checked_head(model)
    assert head is not None
    grads = nn.value_and_grad(model, masked_loss)
    for batch, lengths, positions in batches:
        (full, n_full), g_full = grads(model, batch, lengths)
        (sparse, n_sparse), g_sparse = grads(model, batch, lengths, positions, head)
        assert int(n_full) == int(n_sparse) and positions.shape[0] % 32 == 0
        assert positions.shape[0] < batch[:, 1:].size  # fewer positions than every one
        assert abs(full.item() - sparse.item()) <= 1e-5 * abs(full.item())
        for (_, a), (_, b) in zip(tree_flatten(g_full), tree_flatten(g_sparse), strict=True):
            assert mx.abs(a - b).max().item() <= 1e-5 * (1 + mx.abs(a).max().item())

    class SoftCapped(gemma.Model):  # a head the split cannot see: it must not be used
        def __call__(self, inputs, cache=None):
            return 3.0 * mx.tanh(super().__call__(inputs, cache) / 3.0)

    model.__class__ = SoftCapped
    assert checked_head(model) is None
    batch, lengths, positions = batches[0]
    want = masked_loss(model, batch, lengths)[0].item()
    assert masked_loss(model, batch, lengths, positions, None)[0].item() == want


def test_grad_checkpoint_changes_memory_not_gradients(tiny_model, genrm_rows):
    """train.grad_checkpoint recomputes activations in the backward pass: the loss and the LoRA
    gradients are those of the plain backward (so the default may turn it off for speed)."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from src.training.loop import checkpoint_layers

    model, tok = load(str(tiny_model))
    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": 4, "scale": 20.0, "dropout": 0.0})
    for _, p in tree_flatten(model.trainable_parameters()):  # non-zero B: gradients flow
        p += 0.01 * mx.random.normal(p.shape, key=mx.random.key(2))
    batch, lengths = next(iter(BatchIterator(0)(make_dataset(genrm_rows[:4], tok, True), 4, 2048)))
    grads = nn.value_and_grad(model, masked_loss)
    (plain, _), g_plain = grads(model, batch, lengths)
    checkpoint_layers(model)
    (ckpt, _), g_ckpt = grads(model, batch, lengths)
    assert abs(plain.item() - ckpt.item()) <= 1e-6 * abs(plain.item())
    for (name, a), (_, b) in zip(tree_flatten(g_plain), tree_flatten(g_ckpt), strict=True):
        assert mx.abs(a - b).max().item() <= 1e-5 * (1 + mx.abs(a).max().item()), name


def test_batches_resume_at_the_same_data_position(tiny_model, genrm_rows):
    tok = load_tokenizer(str(tiny_model))
    ds = make_dataset(genrm_rows[:40], tok, mask_prompt=True)
    full = BatchIterator(7)(ds, 4, 2048, loop=True)
    seq = [np.array(next(full)[0]) for _ in range(25)]  # 2.5 epochs of 10 batches
    resumed = BatchIterator(7, start_batch=13)(ds, 4, 2048, loop=True)
    for expected in seq[13:]:
        got = np.array(next(resumed)[0])
        assert np.array_equal(got, expected)
    # evaluation covers every row, the last partial batch padded with empty rows
    ds_odd = make_dataset(genrm_rows[:10], tok, mask_prompt=True)
    batches = list(BatchIterator(0)(ds_odd, 4, 2048))
    assert len(batches) == 3 and int(np.array(batches[-1][1])[:, 1].astype(bool).sum()) == 2


def test_pair_batches_keep_a_task_together_and_balance_labels(tiny_model, genrm_rows):
    """With groups a task's rows are adjacent, so most batches hold a correct and a wrong
    response to the same task; length-sorted batches alone are often one label only (a wrong
    answer's row is shorter or longer than a right one's)."""
    tok = load_tokenizer(str(tiny_model))
    rows = genrm_rows[:200]
    lengths = [len(x) for x, _ in make_dataset(rows, tok, mask_prompt=True)]
    tasks = [r["metadata"]["task_id"] for r in rows]
    plain, paired = BatchIterator(0).order(lengths), BatchIterator(0, groups=tasks).order(lengths)
    assert plain == sorted(range(200), key=lambda i: lengths[i])
    assert sorted(paired) == list(range(200))
    runs = [tasks[i] for i in paired]
    starts = [t for k, t in enumerate(runs) if k == 0 or runs[k - 1] != t]
    assert len(starts) == len(set(tasks))  # every task's rows form one run
    assert BatchIterator(0, groups=tasks).order(lengths, loop=False) == plain  # evaluation

    def one_label(order):
        labels = [
            [rows[i]["metadata"]["label"] for i in order[k : k + 4]] for k in range(0, 200, 4)
        ]
        return sum(len(set(b)) == 1 for b in labels)

    assert one_label(paired) < one_label(plain) / 2
    # rows without a task id are their own group: plain length order
    assert BatchIterator(0, groups=[None] * 200).order(lengths) == plain


def test_shuffled_batches_mix_families_and_are_a_function_of_the_seed(tiny_model, genrm_rows):
    """shuffle orders training rows by a seeded random key: a permutation, the same for the same
    seed (so a resumed run sees the same batches), other for another seed, with batches of
    mixed task families where length order keeps a family together; evaluation stays in length
    order, and with groups a task's rows stay adjacent."""
    tok = load_tokenizer(str(tiny_model))
    rows = genrm_rows[:200]
    lengths = [len(x) for x, _ in make_dataset(rows, tok, mask_prompt=True)]
    plain = BatchIterator(0).order(lengths)
    mixed = BatchIterator(0, shuffle=True, window=2).order(lengths, batch_size=4)
    assert sorted(mixed) == list(range(200)) and mixed != plain
    assert mixed == BatchIterator(0, shuffle=True, window=2).order(lengths, batch_size=4)
    assert mixed != BatchIterator(1, shuffle=True, window=2).order(lengths, batch_size=4)
    assert BatchIterator(0, shuffle=True).order(lengths, loop=False) == plain  # evaluation
    # each run of window x batch size rows is sorted by length: the same rows as windows of
    # one batch (fully random batches) in another order, less padding
    runs = [mixed[k : k + 8] for k in range(0, 200, 8)]
    assert all([lengths[i] for i in r] == sorted(lengths[i] for i in r) for r in runs)
    random = BatchIterator(0, shuffle=True).order(lengths, batch_size=4)
    assert [set(r) for r in runs] == [set(random[k : k + 8]) for k in range(0, 200, 8)]

    def padded(order):
        return sum(max(lengths[i] for i in order[k : k + 4]) for k in range(0, 200, 4))

    assert padded(plain) <= padded(mixed) < padded(random)

    def one_family(order):
        kinds = [
            {rows[i]["metadata"]["task_type"] for i in order[k : k + 4]} for k in range(0, 200, 4)
        ]
        return sum(len(b) == 1 for b in kinds)

    assert one_family(mixed) < one_family(plain) / 2
    tasks = [r["metadata"]["task_id"] for r in rows]
    grouped = BatchIterator(0, groups=tasks, shuffle=True).order(lengths)
    runs = [tasks[i] for i in grouped]
    assert sum(k == 0 or runs[k - 1] != t for k, t in enumerate(runs)) == len(set(tasks))
    assert grouped != BatchIterator(0, groups=tasks).order(lengths)


def test_recipe_flags_train_and_write_outputs(tmp_path, tiny_model, splits):
    train, valid = splits
    args = [
        "--model",
        str(tiny_model),
        "--train-data",
        str(train),
        "--valid-data",
        str(valid),
        "--iters",
        "8",
        "--batch-size",
        "4",
        "--grad-accum",
        "4",
        "--lora-layers",
        "2",
        "--rank",
        "16",
        "--learning-rate",
        "2e-4",
        "--warmup-steps",
        "1",
        "--max-seq-length",
        "2048",
        "--adapter-path",
        str(tmp_path / "adapter"),
        "--mask-prompt",
        "--grad-checkpoint",
        "--live-dir",
        str(tmp_path / "live"),
        "--metrics",
        str(tmp_path / "train.json"),
        "--steps-per-report",
        "4",
        "--steps-per-eval",
        "4",
        "--steps-per-save",
        "4",
    ]
    assert main(args) == 0
    m = json.loads((tmp_path / "train.json").read_text())
    assert m["iterations"] == 8 and m["optimizer_updates"] == 2
    assert m["n_valid"] == 40 and m["trained_tokens"] > 0
    for key in (
        "valid_loss_initial",
        "valid_ppl",
        "best_valid_ppl",
        "tokens_per_sec",
        "peak_memory_gb",
        "wall_seconds",
        "train_loss",
    ):
        assert key in m
    adapter = tmp_path / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["lora_parameters"]["rank"] == 16 and config["base_quantization"]["bits"] == 4
    assert (adapter / "best" / "adapters.safetensors").is_file()
    info = json.loads((adapter / "run_info.json").read_text())
    assert info["versions"]["mlx-lm"] and info["blas"] and info["base"]["quantized_base"]

    # The curves, through DVCLive: one .tsv per metric, step = iteration; the learning rate
    # warms up over optimizer updates, not iterations.
    curves = tmp_path / "live" / "plots" / "metrics"
    assert {p.name for p in curves.iterdir()} == {
        f"{m}.tsv"
        for m in (
            "train_loss",
            "learning_rate",
            "tokens_per_sec",
            "update",
            "valid_loss",
            "valid_ppl",
        )
    }
    update = (curves / "update.tsv").read_text().splitlines()
    assert update[0] == "step\tupdate" and [r.split("\t")[1] for r in update[1:]] == ["1", "2"]
    valid_curve = (curves / "valid_loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in valid_curve[1:]] == ["0", "4", "8"]
    live = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert live["step"] == 8 and live["valid_loss"] == m["valid_loss"]

    from mlx_lm import load

    model, _ = load(str(tiny_model), adapter_path=str(adapter))  # mlx-lm reads our adapter
    assert any(
        "lora_a" in k for k, _ in __import__("mlx.utils").utils.tree_flatten(model.parameters())
    )


def _train_cmd(tmp_path, model, train, valid, tag, **extra) -> list[str]:
    args = train_flags(
        tmp_path,
        model,
        train,
        valid,
        iters=48,
        dropout=0.1,
        steps_per_eval=16,
        adapter_path=tmp_path / tag / "adapter",
        state_dir=tmp_path / tag / "state",
        live_dir=tmp_path / tag / "live",
        metrics=tmp_path / tag / "train.json",
        **extra,
    )
    return [sys.executable, "-m", "src.train_sft", *args]


@pytest.mark.parametrize("report, average", [(1, 0), (10, 20)])
def test_resume_after_kill_equals_uninterrupted_run(tmp_path, tiny_model, splits, report, average):
    """Killed after its iteration-12 checkpoint and resumed, a run ends bitwise where the
    uninterrupted one does, whatever the report interval (10: the checkpoint falls between two
    reports, whose window of losses must survive the kill) and with --average-last (20 of 24
    updates: the running sum of updates 5-6 must survive it too)."""
    train, valid = splits
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = dict(steps_per_report=report, average_last=average)
    subprocess.run(
        _train_cmd(tmp_path, tiny_model, train, valid, "a", **run),
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )

    proc = subprocess.Popen(
        _train_cmd(tmp_path, tiny_model, train, valid, "b", **run),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = tmp_path / "b" / "state" / "iter_0000012" / "state.json"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run never reached its checkpoint"
    assert not (tmp_path / "b" / "adapter").exists(), "killed too late: the run had finished"

    done = subprocess.run(
        _train_cmd(tmp_path, tiny_model, train, valid, "b", resume="true", **run),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "resumed from iteration" in done.stdout
    a = mx.load(str(tmp_path / "a" / "adapter" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "b" / "adapter" / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # bitwise: same ops, same order, same inputs on the CPU
        assert np.array_equal(np.array(a[k]), np.array(b[k])), k
    ma = json.loads((tmp_path / "a" / "train.json").read_text())
    mb = json.loads((tmp_path / "b" / "train.json").read_text())
    assert ma["valid_loss"] == mb["valid_loss"] and ma["train_loss"] == mb["train_loss"]
    assert ma["averaged_updates"] == mb["averaged_updates"] == average

    def curve(tag, name):  # DVCLive's .tsv of one metric
        return (tmp_path / tag / "live" / "plots" / "metrics" / f"{name}.tsv").read_text()

    # every curve but the timings, row for row: none lost or doubled by the kill
    for name in ("valid_loss", "valid_ppl", "train_loss", "learning_rate", "update"):
        assert curve("a", name) == curve("b", name), name
    assert len(curve("a", "train_loss").splitlines()) == 1 + 48 // report + (report == 10)


def test_resume_refuses_other_settings(tmp_path, tiny_model, splits, capsys):
    train, valid = splits
    assert main(train_flags(tmp_path, tiny_model, train, valid)) == 0
    assert main(train_flags(tmp_path, tiny_model, train, valid, rank=8, resume="true")) == 1
    assert "fingerprint mismatch" in capsys.readouterr().err


def test_nan_loss_stops_with_iteration_and_keeps_checkpoint(
    tmp_path, tiny_model, genrm_rows, monkeypatch, capsys
):
    import src.modeling.losses as losses

    rows = genrm_rows[:40]
    poisoned = {
        **rows[0],
        "messages": [rows[0]["messages"][0], {"role": "assistant", "content": "<unk> Score: 1/10"}],
    }
    train = write_jsonl(tmp_path / "train.jsonl", rows[1:] + [poisoned])
    valid = write_jsonl(tmp_path / "valid.jsonl", genrm_rows[200:220])
    unk = load_tokenizer(str(tiny_model)).convert_tokens_to_ids("<unk>")

    def poisoned_loss(model, batch, lengths, positions=None, head=None, kernels="fast"):
        loss, ntoks = masked_loss(model, batch, lengths, positions, head, kernels)
        return mx.where((batch == unk).any(), mx.array(float("nan")), loss), ntoks

    monkeypatch.setattr(losses, "masked_loss", poisoned_loss)
    code = main(train_flags(tmp_path, tiny_model, train, valid, iters=40, steps_per_save=2))
    err = capsys.readouterr().err
    assert code == 1
    assert "NaN or infinite at iteration" in err and "Traceback" not in err
    bad_iter = int(err.split("at iteration ")[1].split(";")[0])
    kept = sorted((tmp_path / "adapter_state").glob("iter_*"))
    if bad_iter > 2:
        assert kept and int(kept[-1].name[5:]) < bad_iter
        weights = mx.load(str(kept[-1] / "adapters.safetensors"))
        assert all(np.isfinite(np.array(v)).all() for v in weights.values())
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"lora_layers": 5}, "--lora-layers 5 exceeds the model's 2 layers"),
        ({"batch_size": 64}, "fewer than --batch-size 64"),
        ({"learning_rate": -1}, "--learning-rate must be in [0.0, 1.0]"),
        ({"iters": 7}, "must be a multiple of --grad-accum"),
        ({"iters": 0}, "--iters must be >= 1"),
        ({"optimizer": "lion"}, "--optimizer must be one of"),
        ({"decay_steps": 2, "lr_schedule": "cosine"}, "--decay-steps (2) is for the constant"),
        ({"decay_steps": 4}, "--warmup-steps (1) + --decay-steps (4) exceed the run's 4"),
        ({"average_last": 5}, "--average-last (5) exceeds the run's 4 optimizer updates"),
        ({"model": "checkpoints/no-such-model"}, "does not exist"),
    ],
)
def test_bad_settings_fail_clearly(tmp_path, tiny_model, splits, capsys, extra, message):
    train, valid = splits
    model = extra.pop("model", tiny_model)  # cwd is the repo root: checkpoints/ exists
    code = main(train_flags(tmp_path, model, train, valid, **extra))
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err and "Traceback" not in err
    assert not (tmp_path / "adapter").exists()


def test_plain_lora_without_quantization(tmp_path, tiny_model, splits):
    train, valid = splits
    assert main(train_flags(tmp_path, tiny_model, train, valid, bits=0)) == 0
    info = json.loads((tmp_path / "adapter" / "run_info.json").read_text())
    assert info["base"]["quantized_base"] is False
    m = json.loads((tmp_path / "train.json").read_text())
    assert m["valid_loss"] < m["valid_loss_initial"]


def test_validate_first_false_skips_only_the_first_pass(tmp_path, tiny_model, splits):
    """--validate-first false drops the pass before training (and valid_loss_initial); the
    training itself and the later validations are the same."""
    train, valid = splits
    out = {}
    for first in ("true", "false"):
        d = tmp_path / first
        assert main(train_flags(d, tiny_model, train, valid, validate_first=first)) == 0
        curve = (d / "live" / "plots" / "metrics" / "valid_loss.tsv").read_text().splitlines()
        out[first] = json.loads((d / "train.json").read_text()), [r.split("\t")[0] for r in curve]
    (with_first, steps_with), (without, steps_without) = out["true"], out["false"]
    assert steps_with == ["step", "0", "4", "8"] and steps_without == ["step", "4", "8"]
    assert "valid_loss_initial" in with_first and "valid_loss_initial" not in without
    for key in ("valid_loss", "train_loss", "best_valid_ppl"):
        assert without[key] == pytest.approx(with_first[key], abs=1e-6)


def test_decay_steps_end_the_constant_schedule_in_a_linear_decay(tmp_path, tiny_model, splits):
    """--decay-steps 4: warmup, constant, then the last 4 updates' learning rates fall linearly
    toward --min-learning-rate (the rate each update used, from the learning-rate curve)."""
    train, valid = splits
    args = dict(grad_accum=1, steps_per_report=1, warmup_steps=1, learning_rate=1e-3)
    for decay in (0, 4):
        d = tmp_path / str(decay)
        flags = train_flags(d, tiny_model, train, valid, decay_steps=decay, **args)
        assert main([*flags, "--min-learning-rate", "1e-4"]) == 0
        curve = (d / "live" / "plots" / "metrics" / "learning_rate.tsv").read_text().splitlines()
        rates = [float(r.split("\t")[1]) for r in curve[1:]]
        tail = [1e-3, 1e-3, 1e-3, 1e-3] if decay == 0 else [1e-3, 7.75e-4, 5.5e-4, 3.25e-4]
        assert rates == pytest.approx([0.0, 1e-3, 1e-3, 1e-3, *tail])


def test_average_last_saves_the_mean_of_the_last_updates(tmp_path, tiny_model, splits):
    """--average-last 2 of 4 updates: the adapter is the mean of the weights after updates 3
    and 4 (the checkpoints of a run without it: same training), validated as such; its last
    checkpoint keeps the trained weights, to resume from."""
    train, valid = splits
    out = {}
    for last in (0, 2):
        d = tmp_path / str(last)
        flags = train_flags(d, tiny_model, train, valid, average_last=last, steps_per_save=2)
        assert main(flags) == 0
        out[last] = {
            "adapter": mx.load(str(d / "adapter" / "adapters.safetensors")),
            "update3": mx.load(str(d / "adapter_state" / "iter_0000006" / "adapters.safetensors")),
            "update4": mx.load(str(d / "adapter_state" / "iter_0000008" / "adapters.safetensors")),
            "metrics": json.loads((d / "train.json").read_text()),
            "info": json.loads((d / "adapter" / "run_info.json").read_text()),
        }
    plain, averaged = out[0], out[2]
    assert plain["adapter"].keys() == averaged["adapter"].keys()
    for k, got in averaged["adapter"].items():
        last, before = np.array(plain["update4"][k]), np.array(plain["update3"][k])
        assert np.array_equal(np.array(plain["adapter"][k]), last), k
        assert np.array_equal(np.array(averaged["update4"][k]), last), k
        assert np.allclose(np.array(got), (last + before) / 2, rtol=1e-6, atol=1e-9), k
    assert any(
        not np.array_equal(np.array(averaged["adapter"][k]), np.array(plain["adapter"][k]))
        for k in plain["adapter"]
    )
    assert (plain["metrics"]["averaged_updates"], averaged["metrics"]["averaged_updates"]) == (0, 2)
    # the same training, another adapter: the validation is the mean's, and fuse checks that
    assert averaged["metrics"]["train_loss"] == plain["metrics"]["train_loss"]
    assert averaged["metrics"]["valid_loss"] != plain["metrics"]["valid_loss"]
    assert averaged["info"]["valid_loss"] == pytest.approx(averaged["metrics"]["valid_loss"])


@pytest.mark.parametrize(
    "flag, values, extra",
    [
        ("pair_batches", ("true", "false"), {}),
        ("shuffle_batches", ("true", "false"), {}),
        ("shuffle_window", ("1", "4"), {"shuffle_batches": "true"}),
    ],
)
def test_batch_order_flags_reach_the_batches(tmp_path, tiny_model, splits, flag, values, extra):
    """--pair-batches, --shuffle-batches and --shuffle-window each train on other batches when
    changed (same seed, same rows)."""
    train, valid = splits
    losses = {}
    for value in values:
        d = tmp_path / value
        assert main(train_flags(d, tiny_model, train, valid, **{flag: value}, **extra)) == 0
        info = json.loads((d / "adapter" / "run_info.json").read_text())
        assert str(info["config"][flag]).lower() == value
        losses[value] = json.loads((d / "train.json").read_text())["train_loss"]
    assert losses[values[0]] != losses[values[1]]


def test_quantized_compute_path_matches_dequantized(tmp_path, tiny_model, splits):
    """QLoRA through quantized matmuls and through dequantized weights train the same model."""
    train, valid = splits
    out = {}
    for mode in ("quantized", "dequantized"):
        d = tmp_path / mode
        assert main(train_flags(d, tiny_model, train, valid, qlora_compute=mode, iters=4)) == 0
        out[mode] = json.loads((d / "train.json").read_text())
    q, d = out["quantized"], out["dequantized"]
    # Before training both see the same 4-bit weights: equal up to float rounding.
    assert q["valid_loss_initial"] == pytest.approx(d["valid_loss_initial"], abs=1e-5)
    # Adam's first steps are ~lr * sign(grad), so rounding-level gradient differences move
    # individual weights by up to lr; after 2 updates at lr 1e-3 the losses stay within 1e-2.
    assert q["valid_loss"] == pytest.approx(d["valid_loss"], abs=1e-2)


def test_bad_row_is_reported_at_its_own_line(tmp_path, tiny_model, splits, capsys):
    """The error cites the file's line, not the row's position (blank lines are skipped)."""
    train, valid = splits
    lines = train.read_text().splitlines()
    bad = tmp_path / "train.jsonl"
    bad.write_text("\n".join(lines[:3] + ["", ""] + ['{"messages": "oops"}'] + lines[3:]) + "\n")
    assert main(train_flags(tmp_path, tiny_model, bad, valid)) == 1
    err = capsys.readouterr().err
    assert f"{bad}:6:" in err and "Traceback" not in err
    assert not (tmp_path / "adapter").exists()
