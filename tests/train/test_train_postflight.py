"""Post-flight: a node's saved folder read back against its base. Real tokenizers of the zoo (Qwen2.5 and
Llama-3 instruct, with their generation configs) on small random models, saved through the node's own
save path (an untrained LoRA adapter merged by :func:`harness.train.common.merge_and_save`); the save is
then broken as real fine-tunes were broken (transformers #48592's ``bos_token_id: null``, a generation
config without the end-of-turn, a changed template) and each break must fail with the file and field named.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from harness.train import common
from harness.train.postflight import PostflightError, check, run
from harness.train.recipe import LoraSpec

ROOT = Path(__file__).resolve().parents[2]
ZOO = next((z for z in (ROOT.parent / "shared" / "tokenizers", Path("/work/shared/tokenizers")) if z.is_dir()), None)

# family: (zoo folder, model config class, its special ids as the hub's config.json has them, generation
# config changes: Llama-3's as the hub fixed it after launch, stopping on <|eot_id|> too)
FAMILIES = {
    "qwen2.5": ("qwen2.5-instruct", "Qwen2Config", dict(vocab_size=151936, bos_token_id=151643, eos_token_id=151645),
                {}),
    "llama3": ("llama3-instruct", "LlamaConfig", dict(vocab_size=128256, bos_token_id=128000, eos_token_id=128001),
               {"eos_token_id": [128001, 128009]}),
}


# one newline dropped from each family's template, as a re-templated fine-tune drops it
TEMPLATE_EDIT = {"qwen2.5": ("+ '<|im_end|>' + '\\n' }}", "+ '<|im_end|>' }}"),
                 "llama3": ("<|end_header_id|>\n\n", "<|end_header_id|>\n")}


def _base(folder: Path, family: str, launch: bool = False) -> Path:
    """A base folder as a hub checkpoint has it: the real tokenizer and generation config, a 1-layer model."""
    import transformers
    from transformers import AutoTokenizer, AutoModelForCausalLM, GenerationConfig

    zoo, cfg_class, ids, fixed = FAMILIES[family]
    if ZOO is None or not (ZOO / zoo).is_dir():
        pytest.skip(f"the tokenizer zoo's {zoo} is not here (tests/../shared/tokenizers, /work/shared/tokenizers)")
    cfg = getattr(transformers, cfg_class)(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                                           **ids)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config = GenerationConfig.from_pretrained(ZOO / zoo)
    for k, v in ({} if launch else fixed).items():
        setattr(model.generation_config, k, v)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(ZOO / zoo).save_pretrained(folder)
    return folder


def _save_node(base: Path, node: Path) -> Path:
    """The node saved as ``run_recipe`` saves it (merged checkpoint, tokenizer, adapter/)."""
    common.save_untrained_adapter(base, LoraSpec(), node / common.ADAPTER_DIR, "cpu")
    common.merge_and_save(base, node / common.ADAPTER_DIR, common.load_tokenizer(base), node, "cpu")
    return node


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def saved(request, tmp_path_factory) -> tuple[Path, Path]:
    """(base, node folder) of one family."""
    top = tmp_path_factory.mktemp(f"postflight-{request.param}")
    base = _base(top / "base", request.param)
    return base, _save_node(base, top / "node")


@pytest.fixture
def broken(saved, tmp_path) -> tuple[Path, Path]:
    """A copy of the node folder to break."""
    base, node = saved
    shutil.copytree(node, tmp_path / "node")
    return base, tmp_path / "node"


def _edit(path: Path, **fields) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(fields)
    path.write_text(json.dumps(data), encoding="utf-8")


def _errors(result) -> dict[str, str]:
    return {f["code"]: f["message"] for f in result.findings if f["severity"] == "error"}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_nodes_real_save_passes_and_is_only_read(saved):
    base, node = saved
    before = _digest(node)
    result = run("sft_d0", node, base)
    assert result.status == "clean", result.findings
    assert _digest(node) == before, "the post-flight wrote into the saved folder"


def test_a_null_bos_fails_naming_the_file_and_field(broken):
    """transformers #48592: the fine-tune's config.json saved with ``bos_token_id: null``."""
    base, node = broken
    _edit(node / "config.json", bos_token_id=None)
    bos = json.loads((base / "config.json").read_text())["bos_token_id"]
    errors = _errors(check("sft_d0", node, base))
    assert errors["special-id-dropped"].startswith(f"config.json: bos_token_id is null; the base's is ")
    assert f"(id {bos})" in errors["special-id-dropped"]
    with pytest.raises(PostflightError, match=r"post-flight plan\.toml: sft_d0: special-id-dropped: config\.json: "
                                              r"bos_token_id is null") as e:
        run("sft_d0", node, base, where="plan.toml: ")
    assert e.value.node == "sft_d0"


def test_a_generation_config_without_the_end_of_turn_fails(broken):
    """The saved generation config stops only on the tokenizer's plain end-of-text: served, a reply runs on
    past its end-of-turn."""
    from transformers import AutoTokenizer

    base, node = broken
    tok = AutoTokenizer.from_pretrained(node)
    eot = tok.convert_tokens_to_ids("<|im_end|>" if "<|im_end|>" in tok.get_vocab() else "<|eot_id|>")
    other = next(i for i in json.loads((base / "generation_config.json").read_text())["eos_token_id"] if i != eot)
    _edit(node / "generation_config.json", eos_token_id=[other])
    errors = _errors(check("sft_d0", node, base))
    name = tok.convert_ids_to_tokens(eot)
    assert errors["end-of-turn-not-generation-eos"] == (f"generation_config.json: eos_token_id {other} lacks the "
                                                        f"end-of-turn {name!r} (id {eot})")
    assert errors["special-id-changed"].startswith(f"generation_config.json: eos_token_id {other} lacks the base's ")


def test_a_changed_chat_template_fails(broken):
    from transformers import AutoTokenizer

    base, node = broken
    tok = AutoTokenizer.from_pretrained(node)
    old, new = TEMPLATE_EDIT["qwen2.5" if "qwen" in str(base.parent) else "llama3"]
    changed = tok.chat_template.replace(old, new)
    assert changed != tok.chat_template
    tok.chat_template = changed
    tok.save_pretrained(node)
    errors = _errors(check("sft_d0", node, base))
    assert set(errors) == {"chat-template-changed"}, errors
    assert errors["chat-template-changed"].startswith("chat_template.jinja: renders the fixed conversation otherwise "
                                                      "than the base's from character ")


def test_a_changed_tokenizer_eos_fails(broken):
    base, node = broken
    _edit(node / "tokenizer_config.json", eos_token="<|endoftext|>" if "qwen" in str(base.parent) else "<|eot_id|>")
    errors = _errors(check("sft_d0", node, base))
    assert errors["special-id-changed"].startswith("tokenizer_config.json: eos_token '")
    assert "lacks the base's" in errors["special-id-changed"]


def test_a_missing_generation_config_fails(broken):
    base, node = broken
    (node / "generation_config.json").unlink()
    assert _errors(check("sft_d0", node, base))["special-id-dropped"].startswith(
        "generation_config.json: missing from the saved folder; the base has one (bos_token_id ")


def test_the_adapter_is_checked_with_the_parent_it_is_served_on(broken, tmp_path):
    base, node = broken
    parent = tmp_path / "parent"
    shutil.copytree(base, parent)
    _edit(parent / "generation_config.json", eos_token_id=[0])  # the parent would stop on neither end token
    found = check("sft_d1", node, base, parent).findings
    assert {f["code"] for f in found} == {"tokenizer-eos-not-generation-eos", "end-of-turn-not-generation-eos"}
    assert {f["file"] for f in found} == {"adapter on the parent's generation_config.json"}
    assert found[0]["message"].startswith("adapter on the parent's generation_config.json: eos_token_id 0 lacks ")
    shutil.rmtree(node / common.ADAPTER_DIR)
    assert _errors(check("sft_d1", node, base)) == {
        "adapter-missing": "adapter/adapter_config.json: missing: the node saved no LoRA adapter to serve on its parent"}


def test_a_code_the_plan_allows_does_not_fail(broken):
    base, node = broken
    _edit(node / "config.json", bos_token_id=None)
    result = run("sft_d0", node, base, allow={"special-id-dropped": "this base's BOS is never used"})
    assert result.status == "allowed" and result.errors == []


def test_llama3_at_launch_stops_wrongly_and_the_preflights_allowance_carries_over(tmp_path):
    """Llama-3-Instruct's launch generation config stops on <|end_of_text|> only, never on the <|eot_id|> its
    template ends turns with: the base already stops wrongly, so a save of it does too. A plan that allowed
    the pre-flight's code with a reason gets the post-flight allowed under the same code."""
    base = _base(tmp_path / "base", "llama3", launch=True)
    node = _save_node(base, tmp_path / "node")
    with pytest.raises(PostflightError, match=r"end-of-turn-not-generation-eos: generation_config\.json: "
                                              r"eos_token_id 128001 lacks the end-of-turn '<\|eot_id\|>' \(id 128009\)"):
        run("sft_d0", node, base)
    allow = {"end-of-turn-not-generation-eos": "served with stop=<|eot_id|>"}
    assert run("sft_d0", node, base, allow=allow).status == "allowed"


# ---- in a build: the node's post-flight, its failure, and a node cached before the post-flight existed

def _one_node_plan(tmp_path: Path, folder: Path) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(f"""name = "pof"
[base]
model = "{folder}"
[data]
limit = 8
[sft]
max_steps = 1
max_length = 512

[[nodes]]
name = "base"
method = "base"

[[nodes]]
name = "sft_d0"
method = "sft"
dataset = "d0"
parent = "base"
""", encoding="utf-8")
    return path


def test_a_build_whose_save_drops_the_bos_fails_the_node(tmp_path, small_model_folder, monkeypatch):
    """transformers #48592 reproduced on the node's real save (the merge's config.json written with
    ``bos_token_id: null``): the node fails with the file and field, and nothing enters the cache."""
    from harness.train import build, load_plan

    real = common.merge_and_save

    def save_dropping_bos(parent_dir, adapter_dir, tokenizer, out_dir, device):
        real(parent_dir, adapter_dir, tokenizer, out_dir, device)
        _edit(Path(out_dir) / "config.json", bos_token_id=None)

    monkeypatch.setattr(common, "merge_and_save", save_dropping_bos)
    failed = {}
    with pytest.raises(PostflightError, match=r"post-flight .*plan\.toml: sft_d0: special-id-dropped: config\.json: "
                                              r"bos_token_id is null; the base's is '<s>'"):
        build(load_plan(_one_node_plan(tmp_path, small_model_folder)), fixtures_dir=tmp_path / "fx", device="cpu",
              progress=False, on_error=lambda name, error: failed.setdefault(name, error))
    assert list(failed) == ["sft_d0"]
    assert not list((tmp_path / "fx" / "nodes").glob("sft_d0-*")), "the broken save was cached"


def test_the_findings_postflight_a_node_cached_before_it_existed(tmp_path, small_model_folder):
    from harness.findings.builds import Builds
    from harness.train import build, load_plan

    plan = load_plan(_one_node_plan(tmp_path, small_model_folder))
    graph = build(plan, fixtures_dir=tmp_path / "fx", device="cpu", progress=False)
    meta_file = graph.path("sft_d0") / "meta.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    assert meta["postflight"]["status"] == "clean" and meta["postflight"]["findings"] == []
    del meta["postflight"]  # as a node built before the post-flight existed
    meta_file.write_text(json.dumps(meta), encoding="utf-8")
    builds = Builds(str(tmp_path / "fx"), "cpu", lambda line: None, tmp_path / "log.txt")
    builds.build(plan)
    (p,) = builds.preflight(1)
    assert (p.node, p.post_status, p.post_verdict) == ("sft_d0", "clean", "ok (checked now)")
    assert "postflight" not in json.loads(meta_file.read_text(encoding="utf-8")), "the check wrote into the cache"
    # a broken old node shows as a failing row with the file and field
    _edit(graph.path("sft_d0") / "generation_config.json", eos_token_id=None)
    _edit(graph.path("sft_d0") / "config.json", eos_token_id=None)
    (p,) = builds.preflight(1)
    assert p.post_failed and p.post_verdict.startswith("FAIL: special-id-dropped: config.json: eos_token_id is null")
