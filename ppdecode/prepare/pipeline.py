"""``prepare``: self-distilled data, trained prompt tokens, accuracy, a tuned tree — one resumable run.

Stages, each a call of the existing stage functions, in a work folder:

    plan      checks, the throughput probe and the plan     plan.json
    data      ``train.data.build_dataset``                  data.jsonl
    train     ``train.trainer.train``, from its checkpoint  tokens/ (tokens.ckpt/ meanwhile)
    accuracy  ``train.accuracy.accuracy_report``            accuracy.json, accuracy.png
    tune      ``tune.tuner.tune`` with a confirmation       tree.json, profile.json (+ the user cache's)
    register  ``registry.register``                         cache_dir()/registry/<fingerprint>/<name>/

``stages.json`` records each stage's settings, its inputs' digests included (``stages.StageLog``): a
stage recorded as done with the same settings whose outputs exist is skipped; any other runs again,
and training continues from its checkpoint when its settings are unchanged (a checkpoint made with
other settings is removed first). Every output is written atomically by the stage function that
makes it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ppdecode.draft_model import resolve_draft
from ppdecode.embedded import DEFAULT_MODEL
from ppdecode.kernels import packed_copy
from ppdecode.models import LoadedModel, cache_dir, load_model
from ppdecode.prepare import checks, registry
from ppdecode.prepare.plan import Plan, Recipe, make_plan
from ppdecode.prepare.probe import available_memory, probe_throughput
from ppdecode.prepare.stages import StageEvent, StageLog, WorkDir, file_digest, normal
from ppdecode.prepare.summary import summarize
from ppdecode.prompt_tokens import PromptTokens
from ppdecode.train import sources
from ppdecode.train.accuracy import accuracy_report, plot_report, save_report
from ppdecode.train.data import HELDOUT, DataConfig, build_dataset, load_dataset
from ppdecode.train.trainer import TrainConfig, train
from ppdecode.tree.builder import Accuracy
from ppdecode.tree.spec import TreeSpec, write_json_atomic
from ppdecode.tune.store import HardwareProfile, artifact_identity, current_key, save_profile
from ppdecode.tune.tuner import TuneConfig, family_of, tune

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig:
    """What ``ppd prepare`` was asked for; the plan derives every size from it."""

    model: str = DEFAULT_MODEL
    writer: str | None = None  # the model that writes the data's answers (None: the model itself)
    time_budget_s: float = 3600.0
    out: str | None = None  # work folder (default: cache_dir()/prepare/<fingerprint>/<name>)
    device: str = "auto"
    dtype: str = "auto"  # the dtype generation will use ("auto": bf16 on a CPU, fp16 on a GPU)
    num_prompt_tokens: int = 3
    deep: bool = True
    prompts: int | None = None  # override the plan's number of prompts
    steps: int | None = None  # override the plan's training steps
    max_new_tokens: int = Recipe.max_new_tokens
    max_prompt_tokens: int = Recipe.max_prompt_tokens
    files: tuple[str, ...] = ()  # the user's own prompt files, used before the built-in sources
    skip_bad: bool = False
    docs_dir: str | None = None
    seed: int = 0
    register: bool = True
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(str(f) for f in self.files))
        if self.time_budget_s <= 0:
            raise ValueError(f"the time budget must be positive, got {self.time_budget_s} s")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")

    def request(self) -> dict[str, Any]:
        """The settings a plan depends on (not where it goes, how often it checkpoints, nor registering)."""
        ignored = {"out", "register", "checkpoint_every"}
        return {k: v for k, v in asdict(self).items() if k not in ignored}


@dataclass(frozen=True)
class PrepareResult:
    work_dir: Path
    entry_dir: Path | None  # the registry entry (None with register=False)
    summary: dict[str, Any]
    stages: dict[str, str]  # stage -> "done" or "skipped"


def default_work_dir(base: LoadedModel) -> Path:
    return cache_dir() / "prepare" / base.fingerprint / registry.slug(base.name)


class _Run:
    """One invocation: the model, the work folder and the log of its stages."""

    def __init__(
        self,
        config: PrepareConfig,
        base: LoadedModel,
        work: WorkDir,
        on_event: Callable[[StageEvent], None],
        on_train_step: Callable[[int, float], None] | None,
        started: float,
        writer: LoadedModel | None = None,
    ) -> None:
        self.config, self.base, self.work = config, base, work
        self.writer = writer or base  # who answers the data's prompts
        self.on_train_step = on_train_step
        self.log = StageLog(work, on_event)
        self.dtype = str(base.dtype).removeprefix("torch.")
        self.started = started  # perf_counter() when the run began (before the model was loaded)

    # ---- stages ----------------------------------------------------------------------------------
    def plan_stage(self) -> Plan:
        config, base = self.config, self.base
        request = {**config.request(), "fingerprint": base.fingerprint, "name": base.name,
                   "device": base.device.type, "dtype": self.dtype}

        def body(previous: dict[str, Any]) -> str:
            recipe = Recipe(
                num_prompt_tokens=config.num_prompt_tokens,
                max_new_tokens=config.max_new_tokens,
                max_prompt_tokens=config.max_prompt_tokens,
                train_batch_size=4 if base.device.type == "cpu" else 16,
            )
            recipe = checks.fit_context(recipe, base.context_length)
            recipe = checks.fit_memory(
                recipe, checks.ModelShape.of(base.model), available_memory(base.device), base.name
            )
            file_prompts = sum(len(sources.read_prompt_file(f, config.skip_bad)) for f in config.files)
            throughput = None if config.prompts is not None else probe_throughput(base, recipe, config.deep)
            # the model's loading and the probe count against the budget
            spent = time.perf_counter() - self.started
            budget = max(config.time_budget_s - spent, config.time_budget_s / 4)
            plan = make_plan(
                budget, recipe, throughput, base.is_chat, self._docs_available(),
                file_prompts, config.prompts, config.steps,
            )
            write_json_atomic(self.work.plan, plan.to_dict())
            where = ", ".join(f"{k} {v}" for k, v in plan.sources.items()) or "your files"
            return (
                f"{plan.prompts} prompts ({where}), {plan.steps} training steps, answers of "
                f"{recipe.max_new_tokens} tokens"
                + (f", estimated {_minutes(sum(plan.estimates.values()))}" if plan.estimates else "")
            )

        if not base.is_chat:
            logger.warning(
                "%s has no chat template: the data are plain-text prompts (Python docs and code) that "
                "the model continues, without self-instructed requests", base.name,
            )
        self.log.run("plan", request, [self.work.plan], body, "checking the model and probing throughput")
        plan = Plan.from_dict(json.loads(self.work.plan.read_text()))
        self.log.estimates = plan.estimates
        return plan

    def _docs_available(self) -> bool:
        try:
            sources.find_docs_dir(self.config.docs_dir)
        except ValueError:
            logger.info("the Python documentation is not installed: its share goes to standard-library code")
            return False
        return True

    def data_stage(self, plan: Plan) -> None:
        config, recipe = self.config, plan.recipe
        files = [Path(f) for f in config.files]
        data_config = DataConfig(
            files=(str(self.work.prompts),) if files else (),
            sources=plan.sources,
            num_prompt_tokens=recipe.num_prompt_tokens,
            max_new_tokens=recipe.max_new_tokens,
            max_prompt_tokens=recipe.max_prompt_tokens,
            cuts_per_sample=recipe.cuts,
            heldout_percent=plan.heldout_percent,
            batch_size=recipe.data_batch_size,
            seed=config.seed,
            docs_dir=config.docs_dir,
        )
        settings = {"data": asdict(data_config), "files": {str(f): file_digest(f) for f in files},
                    "fingerprint": self.base.fingerprint, "dtype": self.dtype,
                    "writer": [self.writer.name, self.writer.fingerprint]}

        def body(previous: dict[str, Any]) -> str:
            if files:
                self._write_file_prompts(files, plan.prompts)
            dataset = build_dataset(self.base, data_config, self.work.data, writer=self.writer)
            header = dataset.header
            if not header["num_heldout"] or not header["num_train"]:
                raise ValueError(
                    f"the dataset has {header['num_train']} training and {header['num_heldout']} held-out "
                    "prompts; both are needed: give a larger --time-budget or --prompts"
                )
            speed = header["generation"]["answers"]["tokens_per_s"]
            return (f"{header['num_train']} train + {header['num_heldout']} held-out prompts, "
                    f"{header['response_tokens']} answer tokens at {speed:.0f} tokens/s")

        message = f"{plan.prompts} prompts answered with up to {recipe.max_new_tokens} tokens"
        self.log.run("data", settings, [self.work.data], body, message)

    def _write_file_prompts(self, files: list[Path], count: int) -> None:
        """The user's prompts, at most ``count`` of them (a seeded sample), as one JSON prompt file."""
        prompts = [p.text for f in files for p in sources.read_prompt_file(f, self.config.skip_bad)]
        if len(prompts) > count:
            prompts = random.Random(self.config.seed).sample(prompts, count)
        write_json_atomic(self.work.prompts, [{"prompt": text} for text in prompts])

    def train_stage(self, plan: Plan) -> None:
        recipe = plan.recipe
        train_config = TrainConfig(
            dataset=str(self.work.data),
            output=str(self.work.tokens),
            model=self.base.name,
            num_prompt_tokens=recipe.num_prompt_tokens,
            deep=self.config.deep,
            steps=plan.steps,
            batch_size=recipe.train_batch_size,
            cuts_per_sample=recipe.cuts,
            max_length=recipe.sequence_length,
            dtype=self.dtype,
            device=self.base.device.type,
            seed=self.config.seed,
            checkpoint_every=self.config.checkpoint_every,
        )
        ignored = {"resume", "log_every", "output"}
        settings = {"train": {k: v for k, v in asdict(train_config).items() if k not in ignored},
                    "data": file_digest(self.work.data)}

        def body(previous: dict[str, Any]) -> str:
            if previous.get("settings") != normal(settings) and train_config.checkpoint_dir.exists():
                logger.info("removing a checkpoint made with other settings: %s", train_config.checkpoint_dir)
                shutil.rmtree(train_config.checkpoint_dir)
            resume = (train_config.checkpoint_dir / "state.pt").is_file()
            run_config = dataclasses.replace(train_config, resume=resume)
            result = train(run_config, self.base, on_step=self.on_train_step)
            record = result.tokens.config.record
            resumed = result.steps - len(result.losses)
            return (f"{result.steps} steps" + (f" (resumed at step {resumed})" if resumed else "")
                    + f", loss {record['loss_first']:.3f} -> {record['loss_last']:.3f}")

        resuming = train_config.checkpoint_dir.exists() and (
            self.log.record("train").get("settings") == normal(settings))
        message = f"{plan.steps} steps of {recipe.train_batch_size} sequences x {recipe.cuts} cuts" + (
            ", continuing from its checkpoint" if resuming else "")
        self.log.run("train", settings, [self.work.tokens], body, message)

    def accuracy_stage(self, plan: Plan) -> None:
        settings = {"tokens": artifact_identity(self.work.tokens), "data": file_digest(self.work.data),
                    "prompts": plan.accuracy_prompts}

        def body(previous: dict[str, Any]) -> str:
            tokens = PromptTokens.load(self.work.tokens, self.base)
            dataset = load_dataset(self.work.data, self.base, tokens.num_prompt_tokens)
            held = dataset.split(HELDOUT)[: plan.accuracy_prompts]
            report = accuracy_report(self.base, tokens, held)
            save_report(report, self.work.accuracy)
            plot_report(report, self.work.plot)
            # The table travels with the tokens: `tune` and "auto" trees find it in their record.
            keys = ("num_prompt_tokens", "top_k", "rank_probs", "topk_accuracy", "num_samples", "dtype")
            tokens.config.record["accuracy"] = {
                "dataset": str(self.work.data), **{k: report[k] for k in keys},
                "init_topk_accuracy": report["init"]["topk_accuracy"],
            }
            tokens.save(self.work.tokens)
            top1 = " / ".join(f"{row[0]:.3f}" for row in report["topk_accuracy"])
            positions = report["num_samples"]
            return f"top-1 at distance 2..{tokens.num_prompt_tokens + 1}: {top1} ({positions} positions)"

        self.log.run("accuracy", settings, [self.work.accuracy], body,
                   f"held-out accuracy on up to {plan.accuracy_prompts} prompts, trained and untrained")

    def tune_stage(self, plan: Plan) -> None:
        decoding = packed_copy(self.base)  # tuned with the linear kernels `ppd generate` decodes with
        tokens = PromptTokens.load(self.work.tokens, decoding)
        key = current_key(decoding, tokens)
        chosen = {"confirm": plan.tune.confirm, "prompts": plan.tune.prompts,
                  "max_new_tokens": plan.tune.max_new_tokens, "batch_sizes": plan.tune.batch_sizes}
        tune_config = TuneConfig.quick_preset(**chosen) if plan.tune.quick else TuneConfig(**chosen)  # type: ignore[arg-type]
        settings = {"key": key.to_dict(), "accuracy": file_digest(self.work.accuracy),
                    "tune": asdict(tune_config)}

        def body(previous: dict[str, Any]) -> str:
            table = Accuracy.load(self.work.accuracy)
            profile = tune(decoding, tokens, table, tune_config)
            save_profile(profile)
            save_profile(profile, self.work.profile)
            tree = profile.exported_tree()  # the batch-size choices travel in its meta
            tree.save(self.work.tree)
            for spec in family_of(profile, table):
                spec.save(self.work.family / f"budget-{spec.meta['budget']}.json")
            speedup = profile.measured_speedup(profile.chosen_budget)
            return (f"budget {profile.chosen_budget}, expected τ {tree.meta['expected_tau']:.2f}"
                    + ("" if speedup is None else f", measured {speedup:.2f}x over vanilla"))

        kind = "quick" if plan.tune.quick else "full"
        self.log.run("tune", settings, [self.work.tree, self.work.profile], body,
                   f"{kind} latency profile, then {plan.tune.confirm} budget(s) against vanilla on "
                   f"{plan.tune.prompts} held-out prompts")

    def register_stage(self, summary: dict[str, Any]) -> Path:
        tree = TreeSpec.load(self.work.tree)
        entry = registry.entry_dir(self.base.fingerprint, self.base.name)
        tuned = tree.meta["tuned_for"]
        identity = artifact_identity(self.work.tokens)
        settings = {"tokens": identity, "tree": file_digest(self.work.tree)}
        outputs = [entry / registry.ENTRY,
                   registry.prepared_tree_path(self.base.fingerprint, self.base.name,
                                               tuned["device_type"], tuned["dtype"])]

        def current() -> bool:  # another preparation of this model may have registered since
            return artifact_identity(entry / registry.TOKENS) == identity

        def body(previous: dict[str, Any]) -> str:
            tokens = PromptTokens.load(self.work.tokens, self.base)
            report = json.loads(self.work.accuracy.read_text())
            registry.register(self.base, tokens, report, tree, {
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "work_dir": str(self.work.root),
                "summary": summary,
            })
            return f"`ppd generate --model {self.config.model}` now uses them ({entry})"

        self.log.run("register", settings, outputs, body, "storing the tokens and the tree in the user cache",
                   current)
        return entry


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _log_event(event: StageEvent) -> None:
    logger.info("[%d/%d] %s %s: %s", event.index, event.total, event.name, event.state, event.message)


def prepare(
    config: PrepareConfig,
    base: LoadedModel | None = None,
    on_event: Callable[[StageEvent], None] | None = None,
    on_train_step: Callable[[int, float], None] | None = None,
) -> PrepareResult:
    """Prepare PPD for ``config.model`` (or the already loaded ``base``): see the module docstring.

    ``on_event`` hears every stage start, skip and end (default: the log); ``on_train_step(step,
    loss)`` is called after every optimiser step.
    """
    started = time.perf_counter()
    writer = None
    if config.writer is not None:  # a draft's data: its target writes the text the draft continues
        writer = load_model(config.writer, device=config.device, dtype=config.dtype)
        base = base or resolve_draft(writer, config.model)
    base = base or load_model(config.model, device=config.device, dtype=config.dtype)
    checks.check_model(base)
    work = WorkDir(Path(config.out) if config.out else default_work_dir(base))
    work.root.mkdir(parents=True, exist_ok=True)
    run = _Run(config, base, work, on_event or _log_event, on_train_step, started, writer)
    plan = run.plan_stage()
    run.data_stage(plan)
    run.train_stage(plan)
    run.accuracy_stage(plan)
    run.tune_stage(plan)
    report = json.loads(work.accuracy.read_text())
    profile = HardwareProfile.read(work.profile)
    dataset = load_dataset(work.data, base)
    tokens = PromptTokens.load(work.tokens, base)
    summary = summarize(base, plan, dataset.header, tokens.config.record, report, profile)
    entry = run.register_stage(summary) if config.register else None
    summary["stages"] = dict(run.log.states)
    summary["registered"] = None if entry is None else str(entry)
    write_json_atomic(work.summary, summary)
    return PrepareResult(work.root, entry, summary, dict(run.log.states))
