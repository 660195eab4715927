"""Shared pieces of the training recipes (SFT, DPO, ORPO): device choice, model loading (4-bit on CUDA),
the LoRA config, trainer arguments, the log and the merge. No training logic lives here."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from harness.errors import HarnessError

ADAPTER_DIR = "adapter"
LOG_FILE = "log.json"
SUMMARY_FILE = "train_summary.json"


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu`` (:func:`harness.device.resolve_device`)."""
    from harness.device import resolve_device as resolve

    return resolve(device)


def load_tokenizer(model_dir: str | Path) -> Any:
    """A model folder's tokenizer, its pad token the EOS when it has none (trl's trainers need one)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def ddp_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) under ``accelerate launch`` (torchrun's variables); (1, 0, 0) alone."""
    env = os.environ
    return int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))


def uses_4bit(device: str, quantize_4bit: bool) -> bool:
    """QLoRA (bitsandbytes nf4) only on CUDA; plain LoRA on the CPU."""
    return bool(quantize_4bit) and device == "cuda"


def config_dtype(model_dir: str | Path) -> torch.dtype:
    """The dtype a checkpoint was saved in (its config's ``dtype``/``torch_dtype``), float32 if absent."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model_dir))
    dt = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or torch.float32
    return getattr(torch, dt) if isinstance(dt, str) else dt


def checkpointing(model: Any, option: str = "auto") -> bool:
    """Gradient checkpointing for ``model`` under a recipe's option (auto: :func:`is_big`)."""
    return {"on": True, "off": False}.get(option, is_big(model))


def load_model(model_dir: str | Path, device: str, quantize_4bit: bool, for_training: bool = True,
               gradient_checkpointing: str = "auto"):
    """Load a causal LM: nf4 + double quant + bf16 compute on CUDA when asked, else in its own dtype."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if uses_4bit(device, quantize_4bit):
        kwargs["quantization_config"] = quantization_config()
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": ddp_env()[2]}  # never "auto" under DDP: it would shard, not replicate
    else:
        dtype = config_dtype(model_dir)
        kwargs["dtype"] = torch.float32 if device == "cpu" and dtype != torch.float32 else dtype
        if device == "cuda":
            kwargs["device_map"] = {"": ddp_env()[2]}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    except OSError as e:
        raise HarnessError(f"cannot load model {model_dir}: {e}") from None
    if uses_4bit(device, quantize_4bit) and for_training:
        model = prepare_4bit(model, gradient_checkpointing)
    return model


def quantization_config() -> Any:
    """QLoRA's 4-bit loading: nf4, double quantization, bf16 compute."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def prepare_4bit(model: Any, gradient_checkpointing: str = "auto") -> Any:
    """A 4-bit model made ready to train: peft's k-bit preparation (which casts every other parameter, the
    4-bit layers' biases too, to float32), then :func:`cast_4bit_biases`."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing(model, gradient_checkpointing))
    cast_4bit_biases(model)
    return model


def cast_4bit_biases(model: Any) -> list[str]:
    """Cast the bias of every bitsandbytes ``Linear4bit`` to the layer's compute dtype; returns their names.

    ``Linear4bit.forward`` casts its input to the compute dtype and, when its bias differs, replaces the bias
    in place (``bias.data = bias.data.to(x.dtype)``). Eagerly that happens once, in the first step; inside a
    torch.compile'd step replayed as CUDA graphs (``compile = "reduce-overhead"``) the bias becomes a graph
    output that the next replay overwrites ("accessing tensor output of CUDAGraphs that has been overwritten"),
    on every base whose linear layers carry a bias (Qwen2's q/k/v). Cast before training, the forward finds
    the dtypes equal and mutates nothing; the values are those the eager first step would have made.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:  # no bitsandbytes: no 4-bit layers
        return []
    cast = []
    for name, module in model.named_modules():
        bias, dtype = getattr(module, "bias", None), getattr(module, "compute_dtype", None)
        if isinstance(module, Linear4bit) and bias is not None and dtype is not None and bias.dtype != dtype:
            bias.data = bias.data.to(dtype)
            cast.append(name)
    return cast


def lora_config(spec: Any):
    """peft ``LoraConfig`` from a :class:`~harness.train.plan.LoraSpec`."""
    from peft import LoraConfig

    targets = spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")


def trainer_kwargs(recipe: Any, out_dir: Path, device: str, seed: int, progress: bool, big: bool,
                   lean: bool = True) -> dict:
    """Arguments common to ``SFTConfig`` and ``DPOConfig``. Under DDP (N processes) ``batch_size`` stays the
    global batch: each process takes 1/N of it (the recipe checks that N divides it). ``lean`` (see
    :func:`lean_steps`) turns off the Trainer's per-step NaN/inf test of the loss, a GPU sync each step that
    changes no weight (it only replaces a non-finite step's logged loss by the running mean)."""
    world = ddp_env()[0]
    # compile: fixed shapes (every batch padded to max_length; the padding is masked) so it compiles once
    option = getattr(recipe, "compile", False)
    compiled = dict(torch_compile=True, pad_to_multiple_of=recipe.max_length) if option else {}
    if isinstance(option, str):  # a torch.compile mode; "reduce-overhead" replays the step's kernels as CUDA graphs
        compiled["torch_compile_mode"] = option
    ddp = dict(ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient each step
               gradient_checkpointing_kwargs={"use_reentrant": False}) if world > 1 else {}
    return dict(
        **ddp,
        **compiled,
        output_dir=str(out_dir / "_trainer"),
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.batch_size // world,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler,
        optim=recipe.optimizer,
        warmup_steps=recipe.warmup_ratio,  # a float in [0, 1) is a ratio
        weight_decay=0.0,
        logging_steps=recipe.logging_steps,
        max_length=recipe.max_length,
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=device == "cuda",
        fp16=False,
        # TF32 off, explicitly: transformers turns it on, process-wide, for any trainer built with
        # torch_compile, so a compiled node changed the fp32 matmuls of whatever ran after it in the process
        # (eager nodes on the same worker, the CUDA weight diff); under bf16 autocast it changes no matmul here
        tf32=False if device == "cuda" else None,
        use_cpu=device == "cpu",
        gradient_checkpointing=big,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        dataset_num_proc=None,
        **({"logging_nan_inf_filter": False} if lean else {}),
    )


def one_gpu(args: Any) -> Any:
    """A trainer config for one process on one GPU. With several GPUs visible and no launcher, ``Trainer``
    would wrap the model in ``nn.DataParallel``, which trl refuses; the model already sits on ``cuda:0``
    (``load_model``'s device map), so the process trains there alone. Several GPUs are the graph's device
    slots or DDP (:mod:`harness.train.distributed`)."""
    if ddp_env()[0] == 1 and args.n_gpu > 1:
        args._n_gpu = 1  # transformers' own attribute behind ``n_gpu``; Trainer sets it the same way for device maps
    return args


def is_big(model: Any) -> bool:
    """Large enough for gradient checkpointing to pay (roughly 1B parameters and up)."""
    return model.config.num_hidden_layers * model.config.hidden_size >= 32 * 1024


def train_log(trainer: Any) -> list[dict]:
    """The per-step log entries (not the final summary), numbers only."""
    rows = []
    for entry in trainer.state.log_history:
        if "train_runtime" in entry:
            continue
        rows.append({k: v for k, v in entry.items() if isinstance(v, (int, float))})
    return rows


def quiet_datasets(progress: bool) -> None:
    """Without progress bars, silence the datasets library's per-map bars too."""
    if not progress:
        import datasets

        datasets.disable_progress_bars()


def check_records_used(trainer: Any, n_records: int, recipe: Any, section: str) -> int:
    """How many records survived trl's preparation; none left (all truncated away) is an error."""
    used = len(trainer.train_dataset)
    if used == 0:
        raise HarnessError(f"[{section}] max_length = {recipe.max_length}: all {n_records} records lost their "
                           "completion to truncation (or were dropped); raise max_length")
    return used


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


@contextlib.contextmanager
def regional_compilation(on: bool) -> Iterator[None]:
    """While a trainer is built (its accelerator reads this), ask accelerate for regional compilation: one
    decoder layer compiled and reused by its repeats (seconds, not minutes). The environment is restored after."""
    key = "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION"
    before = os.environ.get(key)
    if on:
        os.environ[key] = "true"
    try:
        yield
    finally:
        if on and before is None:
            del os.environ[key]
        elif on:
            os.environ[key] = before


SHARED_DATA_DIR = "_ddp_datasets"  # under DDP: the ranks' dataset files, in the node's folder; removed after


def training_dataset(records: Iterable[dict], out_dir: Path) -> Any:
    """``records`` as a ``datasets.Dataset``. Under DDP it is backed by a file in the node's folder, so the
    cache files trl derives from it (the DPO reference log-probs) lie where every rank looks: an in-memory
    dataset's cache path is a temporary folder of its own process, and rank 1 did not find rank 0's file."""
    from datasets import Dataset

    dataset = Dataset.from_list(list(records))
    world, rank, _ = ddp_env()
    if world == 1:
        return dataset
    folder = out_dir / SHARED_DATA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return dataset.flatten_indices(cache_file_name=str(folder / f"records-rank{rank}.arrow"))


def step_timer() -> Any:
    """A trainer callback timing each optimizer step (wall clock between step ends; trl's per-step metrics
    synchronise the GPU, so this is the step's real time). Its ``summary()`` gives the first step (which
    carries compilation and warm-up), the median, 90th percentile and slowest of the rest, and their sum."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not self.marks:
                self.marks.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.marks.append(time.perf_counter())

        def summary(self) -> dict:
            steps = [b - a for a, b in zip(self.marks, self.marks[1:])]
            if not steps:
                return {}
            rest = sorted(steps[1:] or steps)
            slowest = sorted(range(len(steps)), key=lambda i: -steps[i])[:3]
            return {"first_step_s": steps[0], "median_step_s": statistics.median(rest),
                    "p90_step_s": rest[int(0.9 * (len(rest) - 1))], "max_step_s": rest[-1], "steps_s": sum(steps),
                    "slowest_steps": [[i + 1, round(steps[i], 3)] for i in slowest]}  # [step number, seconds]

    return StepTimer()


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that replay CUDA graphs


def cuda_graph_steps() -> Any:
    """A trainer callback marking each step's start for torch's CUDA graph trees, so that a step's replays
    may reuse the previous step's buffers (the compiled layers run many times a step)."""
    from transformers import TrainerCallback

    class CudaGraphSteps(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            torch.compiler.cudagraph_mark_step_begin()

    return CudaGraphSteps()


#: Dense bf16 tensor-core peak FLOP/s per GPU, by a substring of ``torch.cuda.get_device_name()`` (first match
#: wins; the vendors' datasheet figures without sparsity). A device not listed (and the CPU) has no MFU.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12), ("H100", 989e12), ("H800", 989e12), ("GH200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("A10G", 70e12), ("L4", 121e12),
)


def peak_flops(device: str) -> tuple[str | None, float | None]:
    """(device name, dense bf16 peak FLOP/s) of the GPU this process trains on; (None, None) on the CPU,
    whose peak the harness does not know, and (name, None) for a GPU missing from :data:`PEAK_BF16_FLOPS`."""
    if device != "cuda" or not torch.cuda.is_available():
        return None, None
    name = torch.cuda.get_device_name(ddp_env()[2])
    return name, next((f for key, f in PEAK_BF16_FLOPS if key in name), None)


def model_params(model: Any) -> int:
    """Parameters of the trained model, every one (frozen base and adapter; a 4-bit weight counts as the values
    it packs): peft's count when ``model`` is a peft model, else the modules' ``numel``."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return int(model.get_nb_trainable_parameters()[1])
    return int(sum(p.numel() for p in model.parameters()))


def utilisation(tokens: float, params: int, seconds: float, device: str, world: int = 1) -> dict:
    """Model FLOP utilisation of a training run: ``6 * params * tokens`` (forward and backward of a dense
    model; the usual estimate, which over-counts LoRA, whose frozen weights get no weight gradient) over
    ``seconds`` and the peak of ``world`` GPUs. ``mfu`` is None on the CPU and on a GPU without a known peak."""
    name, peak = peak_flops(device)
    flops = 6.0 * params * tokens
    return {"params": params, "model_flops": flops, "gpu_name": name, "peak_flops_per_gpu": peak,
            "mfu": flops / seconds / (peak * world) if peak and seconds else None}


def train_summary(trainer: Any, log: list[dict], device: str, params: int | None = None) -> dict:
    """Steps, runtime, tokens/s, MFU (:func:`utilisation`, with ``params`` the model's parameter count) and (on
    CUDA) peak GPU memory of a finished ``trainer.train()``. Tokens are those the trainer counted (the
    attention mask's, every process's)."""
    final = next((e for e in reversed(trainer.state.log_history) if "train_runtime" in e), {})
    runtime = float(final.get("train_runtime", 0.0))
    tokens = float(next((r["num_tokens"] for r in reversed(log) if "num_tokens" in r), 0.0))
    out = {"steps": int(trainer.state.global_step), "train_runtime_s": runtime, "num_tokens": tokens,
           "tokens_per_s": tokens / runtime if runtime else None,
           "steps_per_s": trainer.state.global_step / runtime if runtime else None}
    if params is not None:
        out.update(utilisation(tokens, params, runtime, device, ddp_env()[0]))
    if device == "cuda":
        out["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return out


def lean_steps(trainer: Any) -> Any:
    """Take per-step CPU work out of ``trainer``'s loop that changes no weight and no logged number (the
    training step is launch-bound on a small model, so host time per step is the step's time):

    - ``floating_point_ops`` (for ``total_flos``) counted the model's parameters by walking every module each
      step; the count is taken once;
    - gradient clipping walked every parameter of the model (frozen base included) each step to find the
      gradients; it gets the trainable ones, listed once (frozen weights have no gradient, so the norm and
      the clipping are the same);
    (``model.train()`` also walks every module each step; it is left alone: a shortcut that trusts the top
    module's flag would miss a submodule put in eval mode, e.g. by a reference pass, and turn its dropout off.)

    With :func:`trainer_kwargs`' ``lean`` (no per-step NaN test) it is the default; ``HARNESS_LEGACY_STEPS=1``
    restores the Trainer's own loop (the benchmark's "before"). Returns ``trainer``."""
    count: list[int] = []

    def floating_point_ops(inputs: dict) -> int:
        main = getattr(trainer.model, "main_input_name", "input_ids")
        if main in inputs and hasattr(trainer.model, "num_parameters"):
            if not count:
                count.append(trainer.model.num_parameters(exclude_embeddings=True))
            return 6 * inputs[main].numel() * count[0]
        return 0

    clip = trainer._clip_grad_norm
    trainable: dict[int, list] = {}

    class _Trainable:  # what Trainer._clip_grad_norm reads of the model: its parameters
        def __init__(self, params: list) -> None:
            self.params = params

        def parameters(self) -> Any:
            return iter(self.params)

    def clip_grad_norm(wrapped: Any) -> Any:
        params = trainable.setdefault(id(wrapped), [p for p in wrapped.parameters() if p.requires_grad])
        return clip(_Trainable(params))

    trainer.floating_point_ops = floating_point_ops
    trainer._clip_grad_norm = clip_grad_norm
    return trainer


def merge_and_save(parent_dir: str | Path, adapter_dir: Path, tokenizer: Any, out_dir: Path, device: str) -> None:
    """Merge the adapter into the parent loaded in its own dtype (not 4-bit) and save safetensors."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = config_dtype(parent_dir)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if device == "cuda":
        kwargs["device_map"] = {"": 0}
    base = AutoModelForCausalLM.from_pretrained(str(parent_dir), **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir), safe_serialization=True, max_shard_size="5GB")
    tokenizer.save_pretrained(str(out_dir))
    del merged, base


def save_untrained_adapter(model_dir: str | Path, spec: Any, adapter_dir: Path, device: str) -> None:
    """A zero-step node: a freshly initialised LoRA adapter (B = 0), so merged equals the parent."""
    from peft import get_peft_model

    model = load_model(model_dir, "cpu", False, for_training=False)
    torch.manual_seed(0)
    get_peft_model(model, lora_config(spec)).save_pretrained(str(adapter_dir), safe_serialization=True)


def write_json(path: Path, obj: Any) -> None:
    """A node file (log, summary, meta) as indented JSON, atomically (:func:`harness.atomic.write_json`)."""
    from harness.atomic import write_json as atomic_write_json

    atomic_write_json(path, obj, indent=1, default=str)


def run_recipe(method: str, make_trainer: Callable[[Any, dict, Any], Any], model_dir: str | Path, tokenizer: Any,
               records: Sequence[dict], recipe: Any, out_dir: str | Path, device: str, *, lora: Any,
               quantize_4bit: bool, seed: int, progress: bool, lean: bool = True) -> Path:
    """The one recipe body, setup → train → save, shared by SFT and DPO.

    ``make_trainer(model, trainer_kwargs, dataset)`` builds the method's trl trainer (its config
    and trainer class are all that differ). ``lean`` takes per-step CPU work that changes no number out of
    the training loop (:func:`lean_steps`); False trains with the Trainer's own loop. Saves the merged
    checkpoint, ``adapter/``, the
    training log and the summary into ``out_dir``; a zero-step recipe saves an untrained adapter.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    adapter_dir = out / ADAPTER_DIR
    t0 = time.perf_counter()
    log: list[dict] = []
    summary: dict = {"device": device, "quantize_4bit": uses_4bit(device, quantize_4bit), "steps": 0}
    if recipe.max_steps == 0:
        save_untrained_adapter(model_dir, lora, adapter_dir, device)
    else:
        # setup
        quiet_datasets(progress)
        option = getattr(recipe, "gradient_checkpointing", "auto")
        model = load_model(model_dir, device, quantize_4bit, gradient_checkpointing=option)
        kwargs = trainer_kwargs(recipe, out, device, seed, progress, checkpointing(model, option), lean)
        with regional_compilation(bool(kwargs.get("torch_compile"))):
            trainer = make_trainer(model, kwargs, training_dataset(records, out))
        if lean:
            lean_steps(trainer)
        summary["lean_steps"] = lean
        summary["records_used"] = check_records_used(trainer, len(records), recipe, method)
        if not progress:  # without the bar, the Trainer prints every log line instead
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        summary["setup_s"] = time.perf_counter() - t0
        # train
        reset_peak_memory(device)
        timer = step_timer()
        trainer.add_callback(timer)
        if device == "cuda" and kwargs.get("torch_compile_mode") in CUDA_GRAPH_MODES:
            trainer.add_callback(cuda_graph_steps())
        t_train = time.perf_counter()
        trainer.train()
        summary["train_call_s"] = time.perf_counter() - t_train  # steps plus the trainer's own set-up and end
        log = train_log(trainer)
        summary.update(train_summary(trainer, log, device, model_params(trainer.model)), **timer.summary(), compiled=bool(kwargs.get("torch_compile")),
                       compile_mode=trainer.args.torch_compile_mode if kwargs.get("torch_compile") else None)
        if ddp_env()[1] != 0:  # under DDP only the first process saves and merges
            return out
        summary["gpus"] = ddp_env()[0]
        # save
        trainer.model.save_pretrained(str(adapter_dir), safe_serialization=True)
        del trainer, model
    t1 = time.perf_counter()
    merge_and_save(model_dir, adapter_dir, tokenizer, out, device)
    summary["merge_save_s"] = time.perf_counter() - t1
    summary["total_s"] = time.perf_counter() - t0
    write_json(out / LOG_FILE, log)
    write_json(out / SUMMARY_FILE, summary)
    return out
