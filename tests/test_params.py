"""params.yaml and dvc.yaml agree: every key reaches a flag, every flag comes from params/vars."""

from __future__ import annotations

import importlib
import shlex

import yaml
from conftest import ROOT

from benchmarks.run_stages import REF, render
from benchmarks.run_stages import flat as flat_params

STAGE_MODULES = {
    "prepare_model": "src.prepare_model",
    "sample_data": "src.make_sample_data",
    "split": "src.split_data",
    "train": "src.train_sft",
    "fuse": "src.fuse_model",
    "evaluate_base": "src.evaluate_genrm",
    "evaluate": "src.evaluate_genrm",
}


def _load():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    variables = {k: v for block in dvc["vars"] for k, v in block.items()}
    return params, flat_params(params), dvc, variables


def test_every_param_reaches_a_flag_and_every_flag_comes_from_params():
    _, flat, dvc, variables = _load()
    used = set()
    for name, stage in dvc["stages"].items():
        tokens = shlex.split(stage["cmd"])
        listed = stage.get("params", [])
        if tokens[0] == "${train.launcher}":  # e.g. `mlx.launch -n 2 --` for distributed training
            used.add("train.launcher")
            assert "train.launcher" in listed or "train" in listed
            tokens = tokens[1:]
        assert tokens[:3] == ["python", "-m", STAGE_MODULES[name]]
        for flag, value in zip(tokens[3::2], tokens[4::2], strict=True):
            assert flag.startswith("--"), (name, flag)
            refs = REF.findall(value)
            # every value is one ${...}: a params.yaml key, a dvc.yaml path var, or a metrics path
            if not refs:
                assert value.startswith("metrics/"), (name, flag, value)
                continue
            for ref in refs:
                if ref in variables:
                    continue
                assert ref in flat, f"{name}: {flag} uses ${{{ref}}} missing from params.yaml"
                assert ref in listed or ref.split(".")[0] in listed, (
                    f"stage {name} reads {ref} but does not list it under params:"
                )
                used.add(ref)
    assert set(flat) == used, f"params never used: {set(flat) - used}"


def test_commands_parse_with_the_stages_own_parsers():
    _, flat, dvc, variables = _load()
    for name, stage in dvc["stages"].items():
        tokens = shlex.split(render(stage["cmd"], {**flat, **variables}))
        argv = tokens[tokens.index("python") + 3 :]
        module = importlib.import_module(STAGE_MODULES[name])
        module.build_parser().parse_args(argv)  # SystemExit on an unknown flag or bad value


def test_defaults_are_the_recipes_hyperparameters_and_recipe_file_is_the_full_run():
    params, flat, *_ = _load()
    recipe = {
        "train.learning_rate": 2.0e-4,
        "train.batch_size": 4,
        "train.max_seq_length": 2048,
        "lora.rank": 16,
        "lora.num_layers": 16,
        "train.mask_prompt": True,
        "train.optimizer": "adam",
        "qlora.bits": 4,
    }
    full = flat_params(yaml.safe_load((ROOT / "params.recipe.yaml").read_text()))
    for key, value in recipe.items():
        assert full[key] == value, key
        if key not in ("train.batch_size", "train.learning_rate"):
            assert flat[key] == value, key
    # the default's smaller batch keeps the recipe's learning rate per sqrt(batch size)
    ratio = flat["train.batch_size"] / full["train.batch_size"]
    scaled = full["train.learning_rate"] * ratio**0.5
    assert abs(flat["train.learning_rate"] - scaled) <= 0.02 * scaled
    assert isinstance(flat["train.learning_rate"], float)  # not the string PyYAML makes of 2e-4
    # warmup: a short share of the run's updates (recipe: 100 of 1250; the default: 24 of 240)
    updates = flat["train.iters"] // flat["train.grad_accum"]
    assert 1 <= flat["train.warmup_steps"] <= updates // 4

    assert set(full) == set(flat)
    differs = {k for k in flat if flat[k] != full[k]}
    assert differs <= {
        "model.name",
        "train.iters",
        "train.batch_size",  # the default: 240 updates of 2 rows (docs/default-judge.md) ...
        "train.learning_rate",  # ... at the recipe's rate scaled by sqrt(2/4) (checked above)
        "train.grad_accum",  # the default: one update per micro-batch
        "train.warmup_steps",
        "train.decay_steps",  # the default's final decay (docs/default-judge.md)
        "train.average_last",  # the default's adapter: the mean over that decay (same doc)
        "train.shuffle_batches",  # batches of mixed families and verdicts (same doc)
        "train.steps_per_eval",
        "train.validate_first",  # the default skips the untrained adapter's validation (45 s)
        "train.steps_per_save",
        "split.valid_size",
        "train.grad_checkpoint",  # memory only: test_train checks the gradients are the same
        "fuse.verify_rows",
    }
    assert full["model.name"] == "google/gemma-2b-it"
    assert full["train.grad_checkpoint"] is True and full["split.valid_size"] == 500
    assert full["train.iters"] == 5000 and full["train.warmup_steps"] == 100
    assert full["train.grad_accum"] == 4


def _module_file(name: str):
    """The file of a ``src`` module or package (its ``__init__.py``), or None."""
    base = ROOT / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _src_imports(module: str) -> set[str]:
    """Files of the ``src`` code that ``python -m module`` runs: the package ``__init__``s on the
    way (``src``'s preloads the BLAS) and what ``module`` imports, at any depth, module-level or
    inside functions, relative imports resolved, and the files beside them that they read
    (``Path(__file__).with_name(...)``: the C kernel)."""
    import ast

    seen, todo, files = set(), [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        path = _module_file(name)
        if path is None:
            continue
        files.add(str(path.relative_to(ROOT)))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    full = f"{base}.{node.module}" if node.module else base
                else:
                    full = node.module or ""
                if full == "src" or full.startswith("src."):
                    todo.append(full)
                    todo += [f"{full}.{a.name}" for a in node.names]  # submodules, if they are
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("src.")]
            elif (  # a file beside it that it reads: Path(__file__).with_name("kernel.c")
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "with_name"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                files.add(str((path.parent / node.args[0].value).relative_to(ROOT)))
    return files


def test_each_stage_depends_on_exactly_the_code_it_runs():
    """A change to a ``src`` module reruns exactly the stages that import it (transitively):
    each stage's ``deps`` list every such module, and no other."""
    _, _, dvc, _ = _load()
    for name, stage in dvc["stages"].items():
        code = _src_imports(STAGE_MODULES[name])
        listed = {d for d in stage["deps"] if d.startswith("src/")}
        assert listed >= code, f"stage {name}: deps lack {sorted(code - listed)}"
        assert listed <= code, (
            f"stage {name}: deps list code it never imports: {sorted(listed - code)}"
        )


def test_dvc_yaml_paths_are_the_stages_defaults():
    from src import paths

    _, _, _, variables = _load()
    assert variables == {k: str(v) for k, v in paths.DVC_VARS.items()}


def test_every_stage_flag_is_documented():
    """One CLI mechanism: each stage's parser comes from its typed config, and every flag has
    a help text (plus the default, which argparse shows)."""
    import argparse

    for module in [*STAGE_MODULES.values(), "src.score"]:
        parser = importlib.import_module(module).build_parser()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), f"{module} {action.option_strings}"
        assert parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter, module
