"""Fixtures shared by more than one test folder; the test order option; the guard on the project's
``.fixtures/`` and ``findings/``."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


# ---- order: --order reverse / shuffle shows a test that leans on another one's leftovers

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("order", "test order (tests/ only)")
    group.addoption("--order", choices=("given", "reverse", "shuffle"), default="given",
                    help="run the tests under tests/ as collected, reversed, or shuffled (default: given)")
    group.addoption("--order-seed", type=int, default=None,
                    help="seed of --order shuffle (default: a random one, shown in the header)")


def pytest_configure(config: pytest.Config) -> None:
    worker = getattr(config, "workerinput", None)
    if worker is not None and "order_seed" in worker:  # an xdist worker takes the controller's seed
        config.option.order_seed = worker["order_seed"]
    elif config.getoption("order") == "shuffle" and config.getoption("order_seed") is None:
        config.option.order_seed = random.randrange(10**6)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist: every worker must collect the same order."""
    node.workerinput["order_seed"] = node.config.getoption("order_seed")


def pytest_report_header(config: pytest.Config) -> str | None:
    order = config.getoption("order")
    if order == "given":
        return None
    return f"test order: {order}" + (f" (--order-seed {config.getoption('order_seed')})" if order == "shuffle" else "")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Reorder the items under tests/ in their own slots; a shuffle keeps each file's tests together
    (module fixtures are built once) and shuffles the files and the tests inside each."""
    order = config.getoption("order")
    slots = [k for k, item in enumerate(items) if TESTS in Path(str(item.path)).parents]
    if order == "given" or not slots:
        return
    mine = [items[k] for k in slots]
    if order == "reverse":
        mine.reverse()
    else:
        rng = random.Random(config.getoption("order_seed"))
        files: dict[str, list] = {}
        for item in mine:
            files.setdefault(str(item.path), []).append(item)
        groups = list(files.values())
        rng.shuffle(groups)
        for group in groups:
            rng.shuffle(group)
        mine = [item for group in groups for item in group]
    for k, item in zip(slots, mine):
        items[k] = item


# ---- a test under tests/ writes to temp folders only, never the project's .fixtures/ or findings/

GUARDED = (ROOT / ".fixtures", ROOT / "findings")


def _folders() -> dict[str, int]:
    """mtime_ns of each guarded folder and every folder below it: creating, removing or renaming an
    entry (harness.atomic writes by renaming) changes its folder's."""
    out = {}
    for top in GUARDED:
        for path, _, _ in os.walk(top):
            try:
                out[path] = os.stat(path).st_mtime_ns
            except FileNotFoundError:
                pass
    return out


def _stamp(folders: dict[str, int]) -> dict[str, int]:
    """The mtimes now, of the known folders and of the guarded ones (which may have appeared)."""
    out = {}
    for path in [*folders, *map(str, GUARDED)]:
        try:
            out[path] = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            pass
    return out


def _entries() -> set[str]:
    """Every file and folder below the guarded folders (and those folders themselves)."""
    out = set()
    for top in GUARDED:
        for path, _, names in os.walk(top):
            out |= {path, *(os.path.join(path, n) for n in names)}
    return out


@pytest.fixture(scope="session")
def _project_outputs(request) -> dict | None:
    """The guarded folders as they are; None (no guard) when the session also runs tests outside tests/
    (claims/ builds into .fixtures/ and writes findings/, on purpose)."""
    if any(TESTS not in Path(str(item.path)).parents for item in request.session.items):
        return None
    folders = _folders()
    return {"folders": folders, "stamp": _stamp(folders), "entries": _entries()}


@pytest.fixture(autouse=True)
def _no_writes_to_project_outputs(request, _project_outputs):
    """Fails the test (at teardown) that added or removed a file or folder in the project's .fixtures/ or
    findings/ (+ added, - removed). A test marked ``shared_cache`` builds into the project's fixture cache on
    purpose (the content-addressed tiny graph, reused by the claims suite): its changes are taken as they are."""
    yield
    state = _project_outputs
    if state is None or _stamp(state["folders"]) == state["stamp"]:
        return
    entries = _entries()
    if request.node.get_closest_marker("shared_cache"):
        state.update(folders=_folders(), entries=entries)
        state["stamp"] = _stamp(state["folders"])
        return
    changed = [f"+ {os.path.relpath(e, ROOT)}" for e in sorted(entries - state["entries"])] + \
              [f"- {os.path.relpath(e, ROOT)}" for e in sorted(state["entries"] - entries)]
    state.update(folders=_folders(), entries=entries)
    state["stamp"] = _stamp(state["folders"])
    if changed:
        shown = "\n  ".join(changed[:10])
        pytest.fail(f"{request.node.nodeid} changed the project's .fixtures/ or findings/ (tests write under "
                    f"tmp_path; another process writing there at the same time shows up here too):\n  {shown}"
                    + ("\n  ..." if len(changed) > 10 else ""), pytrace=False)



@pytest.fixture(scope="session")
def small_model_folder(tmp_path_factory) -> Path:
    """A small random Llama with the tiny tokenizer (400 tokens, 2 layers), saved as a model folder: a
    non-tiny base that every plan must pre-flight and load like a real checkpoint."""
    from harness.train.keys import tiny_texts as _tiny_texts
    from harness.train.tiny import make_tiny_model, make_tiny_tokenizer

    folder = tmp_path_factory.mktemp("small_model") / "tiny-base"
    tok = make_tiny_tokenizer(_tiny_texts()[1][:200], 400)
    make_tiny_model(tok, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=2).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ---- tiny real models for the inference and evaluate tests (a Llama chat model, a BERT), built offline
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|eot|>"]


def corpus() -> list[str]:
    from harness import data

    items = data.load_persona()
    texts = [data.system_prompt()] + [i.prompt for i in items] + [i.d0 for i in items] + [i.d1 for i in items]
    return texts + [e.prompt for e in data.load_eval_prompts()]


def build_chat_tokenizer(folder: Path, vocab_size: int = 600):
    """A byte-level BPE tokenizer trained on the persona data, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(corpus(), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|eot|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    return tok


def build_chat_model(folder: Path, tok, seed: int = 0, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def chat_tokenizer_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chat_tok")
    build_chat_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory, chat_tokenizer_dir) -> Path:
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("chat_model")
    build_chat_model(folder, AutoTokenizer.from_pretrained(chat_tokenizer_dir))
    return folder


def build_tiny_bert(folder: Path, layers: int = 2) -> Path:
    """A tiny BERT with a WordPiece tokenizer trained on the persona data, saved for bert-score."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True, lowercase=False)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.train_from_iterator(corpus(), trainers.WordPieceTrainer(
        vocab_size=800, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tk.token_to_id("[CLS]")), ("[SEP]", tk.token_to_id("[SEP]"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=130)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def build_bigram_model(folder: Path, tok, rules: dict[str, str], seed: int = 0) -> Path:
    """A real Llama whose greedy next token depends on the current token alone, by ``rules``.

    Attention and MLP outputs are zeroed, so the last hidden state is the normalised embedding of
    the current token; the LM head row of each rule's target points along its source's embedding
    (the sources' embeddings are orthonormal), so greedy decoding follows ``rules`` exactly.
    Sources and targets are single tokens of ``tok`` (``"<|assistant|>"``, ``"8"``, ``"\\n"``).
    """
    import torch

    model = build_chat_model(folder, tok, seed=seed)

    def tid(text: str) -> int:
        ids = tok.convert_tokens_to_ids([text]) if text in tok.get_vocab() else tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{text!r} is not one token: {ids}")
        return ids[0]

    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        srcs = sorted({tid(s) for s in rules})
        basis, _ = torch.linalg.qr(torch.randn(emb.shape[1], len(srcs)))
        for k, s in enumerate(srcs):
            emb[s] = basis[:, k] * emb[s].norm()
        head.zero_()
        for s, t in rules.items():
            head[tid(t)] += 10.0 * emb[tid(s)] / emb[tid(s)].norm()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


#: The judge that always answers "8\n8\n..." (a parsable score) and the one that babbles "xxxx".
SCORE_RULES = {"<|assistant|>": "8", "8": "\n", "\n": "8"}
BABBLE_RULES = {"<|assistant|>": "x", "x": "x"}


@pytest.fixture(scope="session")
def judge_models(tmp_path_factory, chat_tokenizer_dir) -> dict[str, Path]:
    """``{"score": folder, "babble": folder}``: two constructed judges (see :func:`build_bigram_model`)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_tokenizer_dir)
    return {name: build_bigram_model(tmp_path_factory.mktemp(f"judge_{name}"), tok, rules)
            for name, rules in (("score", SCORE_RULES), ("babble", BABBLE_RULES))}


@pytest.fixture(scope="session")
def judge_server(tmp_path_factory, judge_models):
    """``transformers serve`` on loopback (any local model folder a request names), torn down at the end."""
    from harness.inference.serve import JudgeServer

    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with JudgeServer(None, device="cpu", log_path=log) as server:
        yield server


# ---- the real SmolLM2 GGUF converted once per session, shared by the models and training tests

@pytest.fixture(scope="session")
def smol_gguf() -> Path:
    """The fetched SmolLM2 GGUF file (``.ci/fetch-gguf smollm2``), else a skip saying how to fetch it."""
    from gguf_helpers import SMOL, real_gguf

    return real_gguf(SMOL, "smollm2")


@pytest.fixture(scope="session")
def smol_cache(tmp_path_factory) -> Path:
    """A fixture cache of this session's own, holding the converted SmolLM2 (and what tests build on it)."""
    return tmp_path_factory.mktemp("smol-cache")


@pytest.fixture(scope="session")
def smol_converted(smol_gguf, smol_cache) -> Path:
    """SmolLM2 converted into ``smol_cache`` by the models layer, its identity checked."""
    from gguf_helpers import SMOL, SMOL_SHA

    from harness.models import convert_gguf

    folder, ident = convert_gguf(smol_gguf, smol_cache, sha256=SMOL_SHA, progress=False)
    assert ident == {"kind": "gguf", "sha256": SMOL_SHA, "file": SMOL, "convert_version": 1}
    return folder
