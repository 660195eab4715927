"""Plan loading: validation errors name the file and the field; variants and seeds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.errors import LoadError
from harness.tomlfile import load_toml
from harness.train import PlanError, load_plan, plan_from_dict

PLANS = Path(__file__).resolve().parents[2] / "fixtures" / "plans"
NODE_NAMES = ("base", "sft_d0", "sft_d1", "sft_d2", "dpo_d0", "dpo_d1", "dpo_d0@sft_d2", "dpo_d1@sft_d2",
              "dpo_d0@sft_d1", "dpo_d1@sft_d1")

GOOD = '''
name = "t"
[base]
model = "tiny"
[sft]
learning_rate = 1e-4
[dpo]
learning_rate = 1e-5
beta = 0.3
[[nodes]]
name = "base"
method = "base"
[[nodes]]
name = "sft_d1"
method = "sft"
dataset = "d1"
parent = "base"
[[nodes]]
name = "dpo_d1@sft_d1"
method = "dpo"
dataset = "d1"
parent = "sft_d1"
'''


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "plan.toml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("name", ["tiny.toml", "study.toml", "smollm2.toml", "gemma3.toml"])
def test_shipped_plans_hold_the_seed_graph_and_recipe(name):
    plan = load_plan(PLANS / name)
    assert plan.names == NODE_NAMES
    assert plan.node("dpo_d0@sft_d1").parent == "sft_d1" and plan.node("dpo_d0@sft_d1").dataset == "d0"
    assert (plan.lora.r, plan.lora.alpha, plan.lora.dropout, plan.lora.target_modules) == (8, 128, 0.05, "all-linear")
    assert (plan.sft.epochs, plan.sft.batch_size, plan.sft.learning_rate, plan.sft.lr_scheduler) == (3, 2, 1e-4, "cosine")
    assert (plan.dpo.epochs, plan.dpo.batch_size, plan.dpo.learning_rate, plan.dpo.beta) == (3, 2, 1e-5, 0.3)
    assert plan.quantize_4bit
    first = (PLANS / name).read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# python -m harness fixtures build fixtures/plans/" + name)


@pytest.mark.parametrize("path", sorted(PLANS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_plan_loads_and_starts_with_its_command(path):
    plan = load_plan(path)
    assert plan.names[0] == "base" and len(plan.names) >= 2
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(f"# python -m harness fixtures build fixtures/plans/{path.name}")
    for name in plan.variants:  # every variant applies
        assert plan.variant(name).variant_name == name


def test_every_part_is_extended_by_a_shipped_plan_and_is_no_plan_itself():
    parts = sorted((PLANS / "parts").glob("*.toml"))
    assert parts
    extended = {(PLANS / load_toml(p)["extends"]).resolve() for p in PLANS.glob("*.toml") if "extends" in load_toml(p)}
    for part in parts:
        assert part.resolve() in extended, f"{part}: no plan extends it"
        assert "base" not in load_toml(part) and "name" not in load_toml(part)


def _study() -> "object":
    """parts/graph.toml as a plan of its own (on the tiny base, which it does not name)."""
    raw = load_toml(PLANS / "parts" / "graph.toml")
    return plan_from_dict({**raw, "base": {"model": "tiny"}}, PLANS / "parts" / "graph.toml")


@pytest.mark.parametrize("name", ["tiny.toml", "study.toml", "smollm2.toml", "gemma3.toml"])
def test_study_plans_equal_the_study_part_except_the_fields_they_state(name):
    """The study's graph and recipe are written once (parts/graph.toml); each plan differs from it only
    where its own file says so, and keeps its own name (findings folders are named by plan)."""
    own = load_toml(PLANS / name)
    assert own["extends"] == "parts/graph.toml" and not {"nodes", "lora", "seed"} & set(own)
    plan, study = load_plan(PLANS / name), _study()
    assert plan.name == name.removesuffix(".toml") == own["name"]
    assert plan.nodes == study.nodes and plan.lora == study.lora
    assert (plan.seed, plan.data_seed, plan.limit) == (study.seed, study.data_seed, study.limit)
    for section in ("sft", "dpo"):
        stated = own.get(section, {})
        for f in dataclasses.fields(getattr(plan, section)):
            want = stated[f.name] if f.name in stated else getattr(getattr(study, section), f.name)
            assert getattr(getattr(plan, section), f.name) == want, f"{name}: {section}.{f.name}"


def test_seed_plan_names_the_elyza_base():
    plan = load_plan(PLANS / "study.toml")
    assert plan.base == "elyza/Llama-3-ELYZA-JP-8B" and plan.requires_cuda


@pytest.mark.parametrize(
    "old, new, field",
    [
        ('method = "sft"', 'method = "ppo"', r"nodes\[1\] \(sft_d1\)\.method"),
        ('dataset = "d1"\nparent = "base"', 'dataset = "d7"\nparent = "base"', r"nodes\[1\] \(sft_d1\)\.dataset"),
        ('parent = "sft_d1"', 'parent = "sft_d9"', r"nodes\[2\] \(dpo_d1@sft_d1\)\.parent"),
        ("learning_rate = 1e-4", 'learning_rate = "fast"', r"sft\.learning_rate: must be a number"),
        ("learning_rate = 1e-4", "learning_rat = 1e-4", r"sft: unknown field 'learning_rat'"),
        ("beta = 0.3", "beta = -1.0", r"dpo\.beta: must be positive"),
        ('model = "tiny"', "model = 3", r"base\.model"),
        ('name = "base"\nmethod = "base"', 'name = "sft_d1"\nmethod = "base"', r"duplicate node name"),
        ("[dpo]", "[dpo\n", r"invalid TOML"),
    ],
)
def test_plan_errors_name_the_file_and_the_field(tmp_path, old, new, field):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(PlanError, match=field) as info:
        load_plan(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, LoadError)


def test_missing_plan_file_is_named(tmp_path):
    with pytest.raises(PlanError, match="nope.toml: no such plan file"):
        load_plan(tmp_path / "nope.toml")


def test_node_overrides_apply_only_to_that_node(tmp_path):
    path = write(tmp_path, GOOD.replace('parent = "sft_d1"', 'parent = "sft_d1"\noverrides = { max_steps = 5 }'))
    plan = load_plan(path)
    assert plan.recipe("dpo_d1@sft_d1").max_steps == 5
    assert plan.recipe("sft_d1").max_steps == -1


def test_variant_overrides_globally_per_node_and_restricts_nodes(tmp_path):
    text = GOOD + '''
[variants.hot_dpo]
dpo = { learning_rate = 1e-4, epochs = 3 }
[variants.zero]
nodes."dpo_d1@sft_d1" = { max_steps = 0 }
only = ["dpo_d1@sft_d1"]
[variants.sft_only]
only = ["sft_d1"]
'''
    plan = load_plan(write(tmp_path, text))
    hot = plan.variant("hot_dpo")
    assert hot.dpo.learning_rate == 1e-4 and hot.sft == plan.sft and hot.variant_name == "hot_dpo"
    assert hot.recipe("dpo_d1@sft_d1").learning_rate == 1e-4
    zero = plan.variant("zero")
    assert zero.recipe("dpo_d1@sft_d1").max_steps == 0 and zero.recipe("sft_d1") == plan.recipe("sft_d1")
    assert plan.variant("sft_only").names == ("base", "sft_d1")
    assert plan.recipe("dpo_d1@sft_d1").max_steps == -1  # the plan itself is unchanged (frozen)
    with pytest.raises(PlanError, match=r"no variant 'nope'; known: hot_dpo, sft_only, zero"):
        plan.variant("nope")


@pytest.mark.parametrize(
    "table, field",
    [
        ('nodes."dpo_d9" = { max_steps = 0 }', r"variants\.bad\.nodes: unknown node 'dpo_d9'"),
        ('nodes."dpo_d1@sft_d1" = { max_step = 0 }', r"variants\.bad\.nodes\.'dpo_d1@sft_d1': unknown field 'max_step'"),
        ('dpo = { beta = "x" }', r"variants\.bad\.dpo\.beta: must be a number"),
        ('only = ["nope"]', r"variants\.bad\.only: unknown node 'nope'"),
        ('sft_lr = 1', r"variants\.bad: unknown field 'sft_lr'"),
    ],
)
def test_bad_variants_fail_at_load_naming_the_field(tmp_path, table, field):
    path = write(tmp_path, GOOD + f"\n[variants.bad]\n{table}\n")
    with pytest.raises(PlanError, match=field) as info:
        load_plan(path)
    assert str(path) in str(info.value)


def test_with_seed_changes_only_the_training_seed(tmp_path):
    plan = load_plan(write(tmp_path, GOOD))
    other = plan.with_seed(7)
    assert other.seed == 7 and plan.seed == 0 and other.nodes == plan.nodes and other.tiny == plan.tiny
    with pytest.raises(PlanError, match="seed must be an integer"):
        plan.with_seed("7")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- base sources, pre-flight, options

def _base_plan(tmp_path: Path, base_lines: str, extra: str = "") -> Path:
    p = tmp_path / "b.toml"
    p.write_text(f'name = "b"\n[base]\n{base_lines}\n{extra}\n[[nodes]]\nname = "base"\nmethod = "base"\n'
                 '[[nodes]]\nname = "s"\nmethod = "sft"\ndataset = "d0"\nparent = "base"\n', encoding="utf-8")
    return p


@pytest.mark.parametrize("lines, extra, match", [
    ('model = "org/m"\nsha256 = "abc"', "", r"b\.toml: base\.sha256: must be 64 hex digits"),
    ('model = "org/m"\noffline = "x.bin"', "", r"b\.toml: base\.offline: must name a \.gguf file"),
    ('model = "org/m"\nstop_tokens = "<eos>"', "", r"b\.toml: base\.stop_tokens: must be a list"),
    ('model = "tiny"\nchat_template = "t.jinja"', "", r"b\.toml: base: offline, sha256, chat_template"),
    ('model = "org/m"', '[preflight]\nallow = { eos-missing = "" }', r"b\.toml: preflight\.allow\.eos-missing: needs a reason"),
    ('model = "org/m"', '[sft]\ngradient_checkpointing = "maybe"', r"b\.toml: sft\.gradient_checkpointing: must be auto"),
    ('model = "org/m"', '[sft]\ncompile = "yes"', r"b\.toml: sft\.compile: must be true or false"),
    ('model = "org/m"', '[dpo]\ncompile = "max-overhead"', r"b\.toml: dpo\.compile: .*torch\.compile mode .*reduce-overhead"),
    ('model = "org/m"', '[dpo]\nprecompute_ref_batch_size = -1', r"b\.toml: dpo\.precompute_ref_batch_size: must be 0"),
    ('model = "org/m"', '[variants.v]\nquantize_4bit = "no"', r"b\.toml: variants\.v\.quantize_4bit: must be true or false"),
])
def test_base_source_and_option_errors_name_file_and_field(tmp_path, lines, extra, match):
    with pytest.raises(PlanError, match=match):
        load_plan(_base_plan(tmp_path, lines, extra))


def test_base_source_fields_load(tmp_path):
    (tmp_path / "t.jinja").write_text("{{ x }}")
    plan = load_plan(_base_plan(tmp_path, 'model = "org/m@rev1"\noffline = "$HARNESS_GGUF_DIR/m.gguf"\n'
                                          f'sha256 = "{"A" * 64}"\nchat_template = "./t.jinja"\nstop_tokens = ["<eos>"]',
                                '[preflight]\nallow = { trained-after-stop = "why" }\n[variants.v]\nquantize_4bit = false'))
    src = plan.source
    assert (src.offline, src.offline_for, src.sha256) == ("$HARNESS_GGUF_DIR/m.gguf", "org/m@rev1", "a" * 64)
    assert src.chat_template == str(tmp_path / "t.jinja") and src.stop_tokens == ("<eos>",)
    assert dict(plan.preflight_allow) == {"trained-after-stop": "why"}
    assert plan.quantize_4bit and not plan.variant("v").quantize_4bit
    assert plan.with_base("other/model").base == "other/model"


# ---------------------------------------------------------------------------- extends

PARENT = GOOD.replace('name = "t"', 'name = "parent"') + '''
[variants.hot]
dpo = { learning_rate = 1e-4, epochs = 3 }
[variants.one]
only = ["sft_d1"]
'''


def _files(tmp_path: Path, **texts: str) -> dict[str, Path]:
    out = {}
    for stem, text in texts.items():
        out[stem] = tmp_path / f"{stem}.toml"
        out[stem].parent.mkdir(parents=True, exist_ok=True)
        out[stem].write_text(text, encoding="utf-8")
    return out


def test_extends_merges_tables_key_by_key_and_keeps_nodes_and_variants(tmp_path):
    f = _files(tmp_path, parent=PARENT, child='extends = "parent.toml"\n[sft]\nepochs = 5\n'
               '[variants.hot]\ndpo = { epochs = 1 }\n[variants.cold]\ndpo = { learning_rate = 1e-6 }\n')
    parent, child = load_plan(f["parent"]), load_plan(f["child"])
    assert child.name == "child" and parent.name == "parent"  # the name is never inherited
    assert child.sft == dataclasses.replace(parent.sft, epochs=5) and child.dpo == parent.dpo
    assert child.nodes == parent.nodes and child.base == parent.base
    assert sorted(child.variants) == ["cold", "hot", "one"]
    assert child.variant("hot").dpo == dataclasses.replace(parent.dpo, learning_rate=1e-4, epochs=1)
    assert child.variant("one").names == ("base", "sft_d1") and child.variant("cold").dpo.learning_rate == 1e-6


def test_extends_replaces_the_node_list_whole_and_then_inherits_no_variants(tmp_path):
    nodes = '[[nodes]]\nname = "base"\nmethod = "base"\n[[nodes]]\nname = "sft_d0"\nmethod = "sft"\n' \
            'dataset = "d0"\nparent = "base"\n'
    f = _files(tmp_path, parent=PARENT, child='extends = "parent.toml"\n' + nodes)
    child = load_plan(f["child"])
    assert child.names == ("base", "sft_d0") and dict(child.variants) == {}
    assert child.sft == load_plan(f["parent"]).sft


def test_extends_chains_and_takes_paths_relative_to_the_file_that_writes_them(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "t.jinja").write_text("{{ x }}")
    (tmp_path / "parts" / "own.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    graph = ('[base]\nmodel = "org/m"\nchat_template = "./t.jinja"\n[[nodes]]\nname = "base"\nmethod = "base"\n'
             '[[nodes]]\nname = "mine"\nmethod = "sft"\ndataset = "own.jsonl"\nparent = "base"\n')
    f = _files(tmp_path, **{"parts/graph": graph, "parts/mid": 'extends = "graph.toml"\n[sft]\nepochs = 2\n',
                            "leaf": 'extends = "parts/mid.toml"\n[dpo]\nbeta = 0.5\n'})
    leaf = load_plan(f["leaf"])
    assert leaf.name == "leaf" and leaf.sft.epochs == 2 and leaf.dpo.beta == 0.5
    assert leaf.source.chat_template == str(tmp_path / "parts" / "t.jinja")
    assert leaf.node("mine").dataset == str(tmp_path / "parts" / "own.jsonl")


@pytest.mark.parametrize("texts, loaded, culprit, match", [
    ({"a": 'extends = "b.toml"\n', "b": 'extends = "a.toml"\n'}, "a", "b", r"extends: 'a\.toml' closes a cycle: .*a\.toml -> .*b\.toml -> .*a\.toml"),
    ({"a": 'extends = "a.toml"\n'}, "a", "a", r"extends: 'a\.toml' closes a cycle"),
    ({"a": 'extends = "b.toml"\n', "b": 'extends = "nope.toml"\n'}, "a", "b", r"extends: no such plan file '.*nope\.toml'"),
    ({"a": "extends = 3\n"}, "a", "a", r"extends: must be the path of another plan file, got 3"),
])
def test_extends_cycles_and_missing_files_are_one_error_naming_file_and_field(tmp_path, texts, loaded, culprit, match):
    f = _files(tmp_path, **texts)
    with pytest.raises(PlanError, match=match) as info:
        load_plan(f[loaded])
    assert str(info.value).startswith(f"{f[culprit]}: extends: ")


def test_a_parsed_table_that_extends_needs_its_path(tmp_path):
    f = _files(tmp_path, parent=PARENT)
    raw = {"extends": "parent.toml", "sft": {"epochs": 4}}
    assert plan_from_dict(raw, tmp_path / "child.toml").sft.epochs == 4  # found from the path given
    with pytest.raises(PlanError, match=r"plan 'x': extends: 'parent\.toml' needs the plan's path"):
        plan_from_dict(raw, name="x")
    assert load_plan(f["parent"]).sft.epochs != 4
